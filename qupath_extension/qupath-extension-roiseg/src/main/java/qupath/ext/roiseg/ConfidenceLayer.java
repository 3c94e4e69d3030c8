package qupath.ext.roiseg;

import java.awt.image.BufferedImage;
import java.awt.image.Raster;
import java.util.LinkedHashMap;
import java.util.Map;
import org.roiseg.client.ConfidenceMap;
import org.roiseg.client.Conventions;
import qupath.lib.regions.ImagePlane;
import qupath.lib.regions.ImageRegion;

/**
 * Where the model was unsure in the ROIs segmented in one image, as images for QuPath's viewer: transparent
 * where the model was sure, an increasingly opaque {@link Conventions#UNSURE_RGB} where it was not (as
 * {@code roiseg segment --confidence} draws it). A ROI segmented again replaces its earlier map; the newest map
 * is drawn last.
 */
public final class ConfidenceLayer {

    /** Opacity (0..255) of the least sure pixels. */
    static final int MAX_ALPHA = (int) Math.round(255 * Conventions.UNSURE_MAX_ALPHA);

    private final Map<ImageRegion, BufferedImage> regions = new LinkedHashMap<>();

    /** Adds (or replaces) the map of a ROI on {@code plane}. */
    public synchronized void put(ImagePlane plane, ConfidenceMap map) {
        ImageRegion region = ImageRegion.createInstance((int) Math.floor(map.originX()),
                (int) Math.floor(map.originY()), (int) Math.ceil(map.regionWidth()),
                (int) Math.ceil(map.regionHeight()), plane.getZ(), plane.getT());
        regions.remove(region);
        regions.put(region, colour(map.image()));
    }

    /** The maps by full-resolution region, oldest first. */
    public synchronized Map<ImageRegion, BufferedImage> regions() {
        return new LinkedHashMap<>(regions);
    }

    /** Whether no map was added. */
    public synchronized boolean isEmpty() {
        return regions.isEmpty();
    }

    /** A grey unsureness map (0 sure .. 255 unsure) as ARGB: the unsure colour, opacity rising with it. */
    static BufferedImage colour(BufferedImage grey) {
        int width = grey.getWidth();
        int height = grey.getHeight();
        Raster raster = grey.getRaster();
        BufferedImage argb = new BufferedImage(width, height, BufferedImage.TYPE_INT_ARGB);
        int[] row = new int[width];
        int[] out = new int[width];
        for (int y = 0; y < height; y++) {
            raster.getSamples(0, y, width, 1, 0, row);
            for (int x = 0; x < width; x++) {
                int alpha = Math.min(MAX_ALPHA, row[x] * MAX_ALPHA / Conventions.UNSURE_FULL_AT);
                out[x] = alpha << 24 | Conventions.UNSURE_RGB;
            }
            argb.setRGB(0, y, width, 1, out, 0, width);
        }
        return argb;
    }
}
