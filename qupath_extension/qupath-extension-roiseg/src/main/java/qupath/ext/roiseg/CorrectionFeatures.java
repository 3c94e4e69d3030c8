package qupath.ext.roiseg;

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.locationtech.jts.geom.Geometry;
import org.roiseg.client.Conventions;
import org.roiseg.client.GeoJsonFeatures;
import org.roiseg.client.SegmentedFeature;

/**
 * What SubmitCorrections sends for one ROI: its classified area children (roiseg's corrected
 * results and the user's own additions alike) as a QuPath GeoJSON FeatureCollection in
 * full-resolution pixels, and which model they correct. Unclassified objects, and objects without an
 * area, are left out. Plain Java over a stand-in of QuPath's objects, so it is unit-tested without QuPath.
 */
public final class CorrectionFeatures {

    private CorrectionFeatures() {
    }

    /**
     * One child of a ROI as far as corrections are concerned.
     *
     * @param geometry  its ROI's geometry in full-resolution pixels; null when it has none
     * @param isArea    whether its ROI is an area (not points or lines)
     * @param className its class's name (QuPath's {@code PathClass.toString()}); null when unclassified
     * @param rgb       its class's colour, packed 0xRRGGBB
     * @param metadata  its metadata (roiseg's keys mark its pre-annotations)
     * @param id        its QuPath object id (for roiseg's results, the prediction's Feature id); null: none
     */
    public record Child(Geometry geometry, boolean isArea, String className, int rgb, Map<String, String> metadata,
                        String id) {
    }

    /** The children that are labels: classified annotations with an area. */
    public static List<Child> labels(Collection<Child> children) {
        List<Child> labels = new ArrayList<>();
        for (Child child : children) {
            if (child.className() != null && !child.className().isBlank() && child.isArea()
                    && child.geometry() != null && !child.geometry().isEmpty()) {
                labels.add(child);
            }
        }
        return labels;
    }

    /**
     * The labels as a QuPath GeoJSON FeatureCollection, in their order (later ones cover earlier ones), each with
     * its object id, so that the server matches them to the predictions they correct.
     */
    public static String featureCollection(List<Child> labels) {
        JsonArray features = new JsonArray();
        for (Child c : labels) {
            features.add(GeoJsonFeatures.toJson(new SegmentedFeature(c.geometry(), c.className(), c.rgb() & 0xFFFFFF,
                    Map.of(), c.metadata() == null ? Map.of() : c.metadata(), c.id())));
        }
        JsonObject collection = new JsonObject();
        collection.addProperty("type", "FeatureCollection");
        collection.add("features", features);
        return collection.toString();
    }

    /**
     * The model the corrections train: {@code given} when not blank, else the model that made most of
     * the roiseg objects among the labels ({@code roiseg.model_id}), else {@code chosen}, else empty
     * (the server's default model).
     */
    public static String modelId(String given, List<Child> labels, String chosen) {
        if (given != null && !given.isBlank()) {
            return given.strip();
        }
        Map<String, Integer> counts = new LinkedHashMap<>();
        for (Child c : labels) {
            Map<String, String> m = c.metadata() == null ? Map.of() : c.metadata();
            String id = m.get(Conventions.MODEL_ID_KEY);
            if (Conventions.isRoisegObject(m) && id != null && !id.isBlank()) {
                counts.merge(id.strip(), 1, Integer::sum);
            }
        }
        String best = null;
        for (var e : counts.entrySet()) {
            if (best == null || e.getValue() > counts.get(best)) {
                best = e.getKey();
            }
        }
        if (best != null) {
            return best;
        }
        return chosen == null ? "" : chosen.strip();
    }

    /** The number of labels roiseg made (its pre-annotations, kept or edited). */
    public static int roisegMade(List<Child> labels) {
        return (int) labels.stream().filter(c -> c.metadata() != null && Conventions.isRoisegObject(c.metadata()))
                .count();
    }
}
