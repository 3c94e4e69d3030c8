package qupath.ext.roiseg;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.locationtech.jts.geom.Geometry;
import org.roiseg.client.Conventions;
import org.roiseg.client.ModelSegmentation;
import org.roiseg.client.SegmentResult;
import org.roiseg.client.SegmentedFeature;

/**
 * One QuPath annotation to create from a segmented feature, before any QuPath object exists: the
 * part of the result mapping that needs no QuPath classes ({@link ResultMapper} does the rest).
 *
 * @param geometry     the shape in full-resolution pixels
 * @param className    the class name, or null for none
 * @param rgb          the class colour as 0xRRGGBB
 * @param name         the object's name, or null for none
 * @param measurements measurements by name, all finite
 * @param metadata     metadata, always with {@link Conventions#ROISEG_SOURCE_KEY} and the model's id
 *                     and version
 * @param id           the object's id from the server (a UUID), or null to let QuPath choose one
 */
public record ObjectSpec(Geometry geometry, String className, int rgb, String name, Map<String, Double> measurements,
                         Map<String, String> metadata, String id) {

    /** Keeps unmodifiable copies of the maps. */
    public ObjectSpec {
        measurements = Collections.unmodifiableMap(new LinkedHashMap<>(measurements));
        metadata = Collections.unmodifiableMap(new LinkedHashMap<>(metadata));
    }

    /**
     * The objects to create for a result, model after model in the server's order. Empty
     * geometries are skipped.
     *
     * @param result      the segmentation
     * @param nameByModel whether to name each object after its model (when comparing models, so
     *                    that objects of the same class from different models can be told apart)
     */
    public static List<ObjectSpec> of(SegmentResult result, boolean nameByModel) {
        List<ObjectSpec> specs = new ArrayList<>();
        for (ModelSegmentation model : result.models().values()) {
            for (SegmentedFeature feature : model.features()) {
                if (feature.geometry().isEmpty()) {
                    continue;
                }
                specs.add(of(feature, model.modelId(), model.modelVersion(), nameByModel ? model.modelId() : null));
            }
        }
        return specs;
    }

    /**
     * The object for one feature: the feature's metadata over roiseg's (source, model id, model
     * version), with the source always marking it as a roiseg pre-annotation so that a later run
     * replaces it; non-finite measurements are dropped. Named `name` when given, else as the
     * server named it (e.g. flagged for review).
     */
    public static ObjectSpec of(SegmentedFeature feature, String modelId, String modelVersion, String name) {
        Map<String, String> metadata = new LinkedHashMap<>(Conventions.objectMetadata(
                modelId == null ? "" : modelId, modelVersion == null ? "" : modelVersion));
        feature.metadata().forEach((k, v) -> {
            if (k != null && v != null) {
                metadata.put(k, v);
            }
        });
        metadata.put(Conventions.ROISEG_SOURCE_KEY, Conventions.ROISEG_SOURCE_VALUE);
        Map<String, Double> measurements = new LinkedHashMap<>();
        feature.measurements().forEach((k, v) -> {
            if (k != null && v != null && Double.isFinite(v)) {
                measurements.put(k, v);
            }
        });
        String className = feature.className() == null || feature.className().isBlank() ? null : feature.className();
        return new ObjectSpec(feature.geometry(), className, feature.rgb() & 0xFFFFFF,
                name != null ? name : feature.name(), measurements, metadata, feature.id());
    }

    /** A 0xRRGGBB colour as QuPath's packed ARGB (opaque). */
    public static int argb(int rgb) {
        return 0xFF000000 | (rgb & 0xFFFFFF);
    }
}
