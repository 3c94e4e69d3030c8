package org.roiseg.client;

import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The conventions the server and every client share for the GeoJSON objects roiseg writes:
 * metadata keys, measurement names, the background class. Mirrors the Python modules
 * {@code roiseg.io.qupath_geojson}, {@code roiseg.io.classes} and {@code roiseg.io.raster}; both
 * are pinned by {@code tests/vectors/conventions.json}.
 */
public final class Conventions {

    /** Major version of the roiseg.v1 contract this client speaks. */
    public static final int CONTRACT_MAJOR = 1;
    /** Minor version of the roiseg.v1 contract this client speaks. */
    public static final int CONTRACT_MINOR = 4;

    /** Metadata key that marks an object as a roiseg pre-annotation. */
    public static final String ROISEG_SOURCE_KEY = "roiseg.source";
    /** The value of {@link #ROISEG_SOURCE_KEY} on roiseg objects. */
    public static final String ROISEG_SOURCE_VALUE = "roiseg";
    /** Metadata key: id of the model that produced the object. */
    public static final String MODEL_ID_KEY = "roiseg.model_id";
    /** Metadata key: version of the model that produced the object. */
    public static final String MODEL_VERSION_KEY = "roiseg.model_version";
    /** Metadata key of the Segment call (run) an object came from; every object of a run shares it. */
    public static final String RUN_ID_KEY = "roiseg.run_id";

    /** Measurement: the object's area in µm². */
    public static final String AREA_MEASUREMENT = "roiseg: predicted area \u00b5m^2";
    /** Measurement: the model's mean probability of the object's class over the object. */
    public static final String PROBABILITY_MEASUREMENT = "roiseg: mean class probability";

    /** Class name of the non-tissue area, returned on request. */
    public static final String BACKGROUND_CLASS = "Background";
    /** Colour of {@link #BACKGROUND_CLASS}, as 0xRRGGBB (white). */
    public static final int BACKGROUND_RGB = 0xFFFFFF;

    /** Colour (0xRRGGBB) in which a {@link ConfidenceMap} is drawn: a yellow no H&amp;E stain has. */
    public static final int UNSURE_RGB = 0xFFE600;

    /** Opacity (0..1) of the least sure pixels of a drawn {@link ConfidenceMap}. */
    public static final double UNSURE_MAX_ALPHA = 0.85;

    /**
     * Unsureness (of 255) drawn at {@link #UNSURE_MAX_ALPHA}, opacity rising linearly below it: a two-class
     * model is at most half unsure.
     */
    public static final int UNSURE_FULL_AT = 128;

    private Conventions() {
    }

    /** Whether an object's metadata marks it as a roiseg pre-annotation; null counts as none. */
    public static boolean isRoisegObject(Map<String, String> metadata) {
        return metadata != null && ROISEG_SOURCE_VALUE.equals(metadata.get(ROISEG_SOURCE_KEY));
    }

    /** The metadata roiseg writes on an object made by a model (source, model id and version). */
    public static Map<String, String> objectMetadata(String modelId, String modelVersion) {
        Map<String, String> metadata = new LinkedHashMap<>();
        metadata.put(ROISEG_SOURCE_KEY, ROISEG_SOURCE_VALUE);
        metadata.put(MODEL_ID_KEY, modelId);
        metadata.put(MODEL_VERSION_KEY, modelVersion);
        return metadata;
    }

    /** A colour as 0xRRGGBB from components 0..255 (no alpha). */
    public static int packRgb(int red, int green, int blue) {
        return (clamp(red) << 16) | (clamp(green) << 8) | clamp(blue);
    }

    /** Red component (0..255) of a 0xRRGGBB colour. */
    public static int red(int rgb) {
        return (rgb >> 16) & 0xFF;
    }

    /** Green component (0..255) of a 0xRRGGBB colour. */
    public static int green(int rgb) {
        return (rgb >> 8) & 0xFF;
    }

    /** Blue component (0..255) of a 0xRRGGBB colour. */
    public static int blue(int rgb) {
        return rgb & 0xFF;
    }

    private static int clamp(int value) {
        return Math.max(0, Math.min(255, value));
    }
}
