package org.roiseg.client;

import org.locationtech.jts.geom.Coordinate;
import org.locationtech.jts.geom.Geometry;
import org.locationtech.jts.geom.util.AffineTransformation;

/**
 * Maps raster pixel-corner coordinates (u, v) to full-resolution slide pixels (x, y) and back.
 * Raster pixel (i, j) covers full-resolution
 * [originX + i*scaleX, originX + (i+1)*scaleX) x [originY + j*scaleY, originY + (j+1)*scaleY),
 * as QuPath's RegionRequest does for an image read at a downsample.
 *
 * @param originX full-resolution x of the raster's top-left corner
 * @param originY full-resolution y of the raster's top-left corner
 * @param scaleX  full-resolution pixels per raster pixel in x (the downsample), &gt; 0
 * @param scaleY  full-resolution pixels per raster pixel in y, &gt; 0
 */
public record RasterTransform(double originX, double originY, double scaleX, double scaleY) {

    /** Checks that the scales are positive and every value is finite. */
    public RasterTransform {
        if (!(scaleX > 0 && scaleY > 0 && Double.isFinite(scaleX) && Double.isFinite(scaleY)
                && Double.isFinite(originX) && Double.isFinite(originY))) {
            throw new IllegalArgumentException("a raster transform needs finite values and positive scales, got "
                    + "RasterTransform(" + originX + ", " + originY + ", " + scaleX + ", "
                    + scaleY + ")");
        }
    }

    /** The transform of an image read at {@code downsample} whose top-left corner is at (originX, originY). */
    public static RasterTransform ofDownsample(double originX, double originY, double downsample) {
        return new RasterTransform(originX, originY, downsample, downsample);
    }

    /** Full-resolution coordinates of raster point (u, v). */
    public Coordinate toFull(double u, double v) {
        return new Coordinate(originX + u * scaleX, originY + v * scaleY);
    }

    /** Raster coordinates of full-resolution point (x, y). */
    public Coordinate toRaster(double x, double y) {
        return new Coordinate((x - originX) / scaleX, (y - originY) / scaleY);
    }

    /** A copy of a raster-coordinate geometry in full-resolution coordinates. */
    public Geometry geometryToFull(Geometry geometry) {
        return toFullTransformation().transform(geometry);
    }

    /** A copy of a full-resolution geometry in raster coordinates. */
    public Geometry geometryToRaster(Geometry geometry) {
        return new AffineTransformation(1 / scaleX, 0, -originX / scaleX, 0, 1 / scaleY, -originY / scaleY)
                .transform(geometry);
    }

    private AffineTransformation toFullTransformation() {
        return new AffineTransformation(scaleX, 0, originX, 0, scaleY, originY);
    }
}
