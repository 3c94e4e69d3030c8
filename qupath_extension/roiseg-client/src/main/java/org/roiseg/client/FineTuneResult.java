package org.roiseg.client;

import java.util.List;

/**
 * A finished fine-tuning.
 *
 * @param model      the new version (id {@code id@version}), already served
 * @param exampleIds the examples it was trained on (training and validation)
 * @param epochs     epochs run
 * @param steps      steps run
 * @param seconds    time taken
 * @param stopReason why the training stopped
 */
public record FineTuneResult(ModelDescription model, List<String> exampleIds, int epochs, int steps, double seconds,
                             String stopReason) {

    /** Keeps an unmodifiable list. */
    public FineTuneResult {
        exampleIds = List.copyOf(exampleIds);
    }
}
