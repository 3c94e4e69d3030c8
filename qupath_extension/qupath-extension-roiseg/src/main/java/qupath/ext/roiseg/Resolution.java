package qupath.ext.roiseg;

import java.util.Collection;
import java.util.Locale;
import java.util.Optional;
import org.roiseg.client.ModelDescription;

/**
 * At which downsample the extension reads a ROI's pixels, and whether the region is small enough to
 * send. Plain Java, no QuPath classes.
 */
public final class Resolution {

    /** Relative tolerance within which a downsample is snapped to the nearest whole number. */
    static final double SNAP = 1e-3;

    private Resolution() {
    }

    /**
     * The downsample to read the image at so that its pixels match a model's resolution:
     * model µm/px divided by image µm/px, snapped to a whole number when within 0.1 % of one
     * (QuPath then reads whole pyramid levels without resampling), never below 1 (the client
     * never upsamples: for an image coarser than the model, the full-resolution pixels are sent
     * and the server decides, see {@link #needsUpsampling}).
     *
     * @param modelMicronsPerPixel the model's input resolution in µm/px
     * @param imageMicronsPerPixel the image's full-resolution pixel size in µm/px
     * @return the downsample, 1 when either value is unknown (not a positive number)
     */
    public static double chooseDownsample(double modelMicronsPerPixel, double imageMicronsPerPixel) {
        if (!isPositive(modelMicronsPerPixel) || !isPositive(imageMicronsPerPixel)) {
            return 1.0;
        }
        double ratio = modelMicronsPerPixel / imageMicronsPerPixel;
        if (ratio <= 1.0 + SNAP) {
            return 1.0;
        }
        double whole = Math.rint(ratio);
        return Math.abs(ratio - whole) <= SNAP * ratio ? whole : ratio;
    }

    /**
     * Whether the image is coarser than the model's resolution (beyond the snapping tolerance),
     * so that the server must upsample it, which it does only when allowed.
     */
    public static boolean needsUpsampling(double modelMicronsPerPixel, double imageMicronsPerPixel) {
        return isPositive(modelMicronsPerPixel) && isPositive(imageMicronsPerPixel)
                && imageMicronsPerPixel > modelMicronsPerPixel * (1 + SNAP);
    }

    /**
     * The finest (smallest) input resolution among models, the one to read pixels at when several
     * models segment the same ROI; NaN when no model gives one.
     */
    public static double finestMicronsPerPixel(Collection<ModelDescription> models) {
        double finest = Double.NaN;
        for (ModelDescription model : models) {
            if (isPositive(model.mpp()) && !(finest <= model.mpp())) {
                finest = model.mpp();
            }
        }
        return finest;
    }

    /**
     * Checks a region before its pixels are read.
     *
     * @param width                full-resolution width of the region (clipped to the image)
     * @param height               full-resolution height of the region
     * @param downsample           downsample it will be read at
     * @param imageMicronsPerPixel full-resolution µm/px of the image
     * @param modelMicronsPerPixel finest µm/px of the models that will segment it
     * @param maxRoiPixels         the server's limit in pixels at model resolution; 0 or less: none
     * @param maxImageBytes        the most memory the client may spend on the read pixels
     * @return a message for the user when the region is too large, else empty
     */
    public static Optional<String> checkRegion(int width, int height, double downsample, double imageMicronsPerPixel,
                                               double modelMicronsPerPixel, long maxRoiPixels, long maxImageBytes) {
        if (width <= 0 || height <= 0) {
            return Optional.of("The annotation lies outside the image: nothing to segment.");
        }
        if (maxRoiPixels > 0 && isPositive(imageMicronsPerPixel) && isPositive(modelMicronsPerPixel)) {
            double scale = imageMicronsPerPixel / modelMicronsPerPixel;
            double w = width * scale;
            double h = height * scale;
            if (w * h > maxRoiPixels) {
                return Optional.of(String.format(Locale.ROOT, "The annotation covers %.0f x %.0f pixels at the "
                        + "model's resolution (%.1f megapixels), above the server's limit of %.1f megapixels. "
                        + "Draw a smaller annotation, or split it into several.", w, h, w * h / 1e6,
                        maxRoiPixels / 1e6));
            }
        }
        double ds = isPositive(downsample) ? downsample : 1.0;
        double bytes = Math.ceil(width / ds) * Math.ceil(height / ds) * 4.0 * 2;
        if (maxImageBytes > 0 && bytes > maxImageBytes) {
            return Optional.of(String.format(Locale.ROOT, "The annotation's pixels (%.0f x %.0f at downsample "
                    + "%.2f) need about %.0f MB, more than QuPath can spare (%.0f MB). Draw a smaller "
                    + "annotation, give QuPath more memory, or let the server read the slide (Extensions > "
                    + "roiseg > Server settings).", Math.ceil(width / ds), Math.ceil(height / ds), ds,
                    bytes / (1 << 20), maxImageBytes / (double) (1 << 20)));
        }
        return Optional.empty();
    }

    static boolean isPositive(double value) {
        return value > 0 && Double.isFinite(value);
    }
}
