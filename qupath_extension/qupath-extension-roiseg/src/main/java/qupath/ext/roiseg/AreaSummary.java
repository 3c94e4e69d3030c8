package qupath.ext.roiseg;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import org.roiseg.client.ClassArea;
import org.roiseg.client.ModelSegmentation;
import org.roiseg.client.SegmentResult;

/**
 * Total area and feature count per model and class over the ROIs of one run, to compare models.
 * Plain Java, no QuPath classes. Not thread-safe.
 */
public final class AreaSummary {

    /** Totals of one class. */
    public static final class Total {
        private double areaMicrons2;
        private int features;

        /** Total area in µm². */
        public double areaMicrons2() {
            return areaMicrons2;
        }

        /** Number of features. */
        public int features() {
            return features;
        }
    }

    private final Map<String, Map<String, Total>> models = new LinkedHashMap<>();

    /** Adds a result's class areas. */
    public void add(SegmentResult result) {
        for (ModelSegmentation model : result.models().values()) {
            add(model.modelId(), model.classAreas());
        }
    }

    /** Adds one model's class areas for one ROI. */
    public void add(String modelId, List<ClassArea> areas) {
        Map<String, Total> classes = models.computeIfAbsent(modelId, id -> new LinkedHashMap<>());
        for (ClassArea area : areas) {
            Total total = classes.computeIfAbsent(area.name(), n -> new Total());
            if (Double.isFinite(area.areaMicrons2())) {
                total.areaMicrons2 += area.areaMicrons2();
            }
            total.features += area.features();
        }
    }

    /** Model ids in the order they were first added. */
    public List<String> modelIds() {
        return List.copyOf(models.keySet());
    }

    /** Class names of all models, in the order they were first added. */
    public List<String> classNames() {
        Set<String> names = new LinkedHashSet<>();
        models.values().forEach(m -> names.addAll(m.keySet()));
        return List.copyOf(names);
    }

    /** The totals of one model's class; null when that model never returned the class. */
    public Total total(String modelId, String className) {
        return models.getOrDefault(modelId, Collections.emptyMap()).get(className);
    }

    /** Whether nothing was added. */
    public boolean isEmpty() {
        return models.isEmpty();
    }

    /**
     * A table with one row per class and, per model, its area in mm² and share of the segmented
     * area; for a dialog or the log.
     */
    public List<List<String>> rows() {
        List<List<String>> rows = new ArrayList<>();
        List<String> header = new ArrayList<>();
        header.add("Class");
        header.addAll(modelIds());
        rows.add(header);
        Map<String, Double> totals = new LinkedHashMap<>();
        for (String model : modelIds()) {
            totals.put(model, models.get(model).values().stream().mapToDouble(Total::areaMicrons2).sum());
        }
        for (String name : classNames()) {
            List<String> row = new ArrayList<>();
            row.add(name);
            for (String model : modelIds()) {
                Total total = total(model, name);
                if (total == null) {
                    row.add("\u2013");
                } else {
                    double all = totals.get(model);
                    row.add(String.format(Locale.ROOT, "%.3f mm\u00b2 (%.1f %%)", total.areaMicrons2 / 1e6,
                            all > 0 ? 100 * total.areaMicrons2 / all : 0.0));
                }
            }
            rows.add(row);
        }
        return rows;
    }

    /** {@link #rows()} as tab-separated text. */
    public String toText() {
        StringBuilder sb = new StringBuilder();
        for (List<String> row : rows()) {
            sb.append(String.join("\t", row)).append('\n');
        }
        return sb.toString();
    }
}
