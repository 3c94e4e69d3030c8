package qupath.ext.roiseg;

import java.util.Locale;
import java.util.Optional;
import java.util.OptionalDouble;

/**
 * Pixel sizes in µm/px: which one a run uses, and checking what a user types for an uncalibrated
 * image. Plain Java, no QuPath classes.
 */
public final class PixelSizes {

    /** Smallest pixel size accepted, in µm/px (finer than any optical scanner). */
    public static final double MIN_MICRONS = 0.01;
    /** Largest pixel size accepted, in µm/px (a 1x thumbnail is about 10 µm/px). */
    public static final double MAX_MICRONS = 100;
    /** Suggested pixel size for a 40x scan, shown when asking the user. */
    public static final double SUGGESTED_MICRONS = 0.25;

    private PixelSizes() {
    }

    /**
     * The full-resolution pixel size a run uses: the user's value when given (a positive number),
     * else the image's calibration when it has one in µm, else empty (the user must be asked).
     *
     * @param userMicrons       pixel size the user typed; 0 or NaN for none
     * @param calibrated        whether the image's pixel size is known in µm
     * @param calibratedMicrons the image's (averaged) pixel size in µm
     */
    public static OptionalDouble effective(double userMicrons, boolean calibrated, double calibratedMicrons) {
        if (Resolution.isPositive(userMicrons)) {
            return OptionalDouble.of(userMicrons);
        }
        if (calibrated && Resolution.isPositive(calibratedMicrons)) {
            return OptionalDouble.of(calibratedMicrons);
        }
        return OptionalDouble.empty();
    }

    /**
     * Checks a pixel size the user gave.
     *
     * @param microns the value, or null when the user cancelled
     * @return a message for the user when the value is not acceptable, else empty
     */
    public static Optional<String> validate(Double microns) {
        if (microns == null || microns.isNaN()) {
            return Optional.of("Enter the pixel size as a number of micrometres per pixel, e.g. 0.25 for a "
                    + "40x scan or 0.5 for a 20x scan.");
        }
        if (!(microns >= MIN_MICRONS && microns <= MAX_MICRONS)) {
            return Optional.of(String.format(Locale.ROOT, "A pixel size of %s \u00b5m/px is not plausible: "
                    + "enter a value between %s and %s \u00b5m/px (0.25 for a 40x scan, 0.5 for 20x).",
                    format(microns), format(MIN_MICRONS), format(MAX_MICRONS)));
        }
        return Optional.empty();
    }

    /**
     * Reads a pixel size typed by the user ("0.25", "0,25", "0.25 µm").
     *
     * @throws IllegalArgumentException with a message for the user when it is not a plausible pixel size
     */
    public static double parse(String text) {
        String t = text == null ? "" : text.strip().replace(',', '.');
        for (String unit : new String[] {"\u00b5m/px", "um/px", "\u00b5m", "um"}) {
            if (t.endsWith(unit)) {
                t = t.substring(0, t.length() - unit.length()).strip();
                break;
            }
        }
        Double value;
        try {
            value = Double.valueOf(t);
        } catch (NumberFormatException e) {
            value = null;
        }
        Optional<String> problem = validate(value);
        if (problem.isPresent()) {
            throw new IllegalArgumentException(problem.get());
        }
        return value;
    }

    /** A pixel size for messages, with up to 4 decimals. */
    public static String format(double microns) {
        String s = String.format(Locale.ROOT, "%.4f", microns);
        s = s.replaceAll("0+$", "");
        return s.endsWith(".") ? s.substring(0, s.length() - 1) : s;
    }
}
