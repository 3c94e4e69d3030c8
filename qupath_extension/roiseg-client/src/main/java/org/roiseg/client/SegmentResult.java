package org.roiseg.client;

import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Optional;

/**
 * The result of one segmentation: one {@link ModelSegmentation} per model, in the order the
 * server returned them.
 *
 * @param models results by model id
 */
public record SegmentResult(Map<String, ModelSegmentation> models) {

    /** Keeps an unmodifiable copy of the map, in its order. */
    public SegmentResult {
        models = Collections.unmodifiableMap(new LinkedHashMap<>(models));
    }

    /** The result of model {@code modelId}, if it ran. */
    public Optional<ModelSegmentation> model(String modelId) {
        return Optional.ofNullable(models.get(modelId));
    }

    /** The result of the first model (the only one when one model ran). */
    public ModelSegmentation first() {
        return models.values().iterator().next();
    }
}
