package org.roiseg.client;

import java.awt.image.BufferedImage;
import java.util.Objects;

/**
 * Pixels of a rectangle of the slide, read by the client at a downsample. Pixel (i, j) of the
 * image covers full-resolution [originX + i*downsample, originX + (i+1)*downsample) and likewise
 * in y, as for an image QuPath reads with a RegionRequest.
 *
 * @param image            the pixels (RGB; alpha is ignored)
 * @param originX          full-resolution x of the image's top-left corner
 * @param originY          full-resolution y of the image's top-left corner
 * @param downsample       full-resolution pixels per image pixel, &gt; 0 (1 = full resolution)
 * @param pixelSizeMicrons full-resolution pixel size in µm/px; 0 or NaN when unknown (the server
 *                         then refuses the request with a message asking for it)
 * @param fullImageWidth   full-resolution width of the whole slide, 0 if unknown
 * @param fullImageHeight  full-resolution height of the whole slide, 0 if unknown
 */
public record RegionImage(BufferedImage image, double originX, double originY, double downsample,
                          double pixelSizeMicrons, int fullImageWidth, int fullImageHeight) {

    /** Checks the image, origin, downsample and sizes. */
    public RegionImage {
        Objects.requireNonNull(image, "image");
        if (!(downsample > 0 && Double.isFinite(downsample))) {
            throw new IllegalArgumentException("the downsample must be a positive number, got " + downsample);
        }
        if (!(Double.isFinite(originX) && Double.isFinite(originY))) {
            throw new IllegalArgumentException("the image origin must be finite, got " + originX + ", " + originY);
        }
        if (fullImageWidth < 0 || fullImageHeight < 0) {
            throw new IllegalArgumentException("the full image size cannot be negative");
        }
    }

    /** A region of a slide whose full size is not given. */
    public RegionImage(BufferedImage image, double originX, double originY, double downsample,
                       double pixelSizeMicrons) {
        this(image, originX, originY, downsample, pixelSizeMicrons, 0, 0);
    }

    /** The same region with the slide's full-resolution size. */
    public RegionImage withFullImageSize(int width, int height) {
        return new RegionImage(image, originX, originY, downsample, pixelSizeMicrons, width, height);
    }

    /** The mapping from this image's pixel corners to full-resolution coordinates. */
    public RasterTransform transform() {
        return RasterTransform.ofDownsample(originX, originY, downsample);
    }
}
