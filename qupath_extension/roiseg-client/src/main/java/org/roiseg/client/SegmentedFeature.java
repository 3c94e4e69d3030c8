package org.roiseg.client;

import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Objects;
import org.locationtech.jts.geom.Geometry;

/**
 * One polygon (or multipolygon) of a class, as the server returns it.
 *
 * @param geometry     the shape in full-resolution slide pixels (Polygon or MultiPolygon, with holes)
 * @param className    the class name (a QuPath PathClass name), or null when the feature has none
 * @param rgb          the class colour as 0xRRGGBB
 * @param measurements measurements by name, e.g. {@link Conventions#AREA_MEASUREMENT}
 * @param metadata     metadata, e.g. {@link Conventions#ROISEG_SOURCE_KEY}
 * @param id           the object's id (a UUID, the Feature's {@code id}), or null when the feature has none
 * @param name         the object's name (e.g. "Gland epithelium (review)" for an object flagged for review),
 *                     or null for none
 */
public record SegmentedFeature(Geometry geometry, String className, int rgb, Map<String, Double> measurements,
                               Map<String, String> metadata, String id, String name) {

    /** A feature without a name. */
    public SegmentedFeature(Geometry geometry, String className, int rgb, Map<String, Double> measurements,
                            Map<String, String> metadata, String id) {
        this(geometry, className, rgb, measurements, metadata, id, null);
    }

    /** Keeps unmodifiable copies of the maps, in their order. */
    public SegmentedFeature {
        Objects.requireNonNull(geometry, "geometry");
        measurements = Collections.unmodifiableMap(new LinkedHashMap<>(measurements));
        metadata = Collections.unmodifiableMap(new LinkedHashMap<>(metadata));
    }

    /** Whether the metadata marks this feature as a roiseg pre-annotation. */
    public boolean isRoisegObject() {
        return Conventions.isRoisegObject(metadata);
    }
}
