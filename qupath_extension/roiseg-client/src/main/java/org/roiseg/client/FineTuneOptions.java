package org.roiseg.client;

import java.util.List;
import org.roiseg.proto.v1.FineTuneRequest;

/**
 * Settings of a fine-tuning (FineTune); 0, NaN or empty means the server's default (docs/fast-track.md).
 *
 * @param modelId       the model to start from ({@code id} or {@code id@version}); empty: the server's default
 * @param exampleIds    the examples to train on; empty: every stored example of the model
 * @param epochs        epochs; 0: 3
 * @param stepsPerEpoch steps per epoch; 0: 10
 * @param batchSize     crops per step; 0: 4
 * @param crop          crop side in pixels, a multiple of 32; 0: 256
 * @param learningRate  NaN: 0.0002
 * @param valFraction   share of the examples held out for validation; NaN: 0.2
 * @param maxMinutes    training time budget; NaN: none
 * @param seed          random seed
 * @param version       the new version's name; empty: the start's version + "-ftN"
 * @param makeDefault   serve the new version under the model's plain id too
 */
public record FineTuneOptions(String modelId, List<String> exampleIds, int epochs, int stepsPerEpoch, int batchSize,
                              int crop, double learningRate, double valFraction, double maxMinutes, int seed,
                              String version, boolean makeDefault) {

    /** Turns nulls into empty values and checks the counts. */
    public FineTuneOptions {
        modelId = modelId == null ? "" : modelId.strip();
        exampleIds = exampleIds == null ? List.of() : List.copyOf(exampleIds);
        version = version == null ? "" : version.strip();
        if (epochs < 0 || stepsPerEpoch < 0 || batchSize < 0 || crop < 0 || seed < 0) {
            throw new IllegalArgumentException("epochs, steps, batch size, crop and seed cannot be negative");
        }
    }

    /** The server's defaults for a model. */
    public static FineTuneOptions of(String modelId) {
        return new FineTuneOptions(modelId, List.of(), 0, 0, 0, 0, Double.NaN, Double.NaN, Double.NaN, 0, "", false);
    }

    /** The same with {@code epochs} epochs of {@code steps} steps. */
    public FineTuneOptions withSteps(int epochs, int steps) {
        return new FineTuneOptions(modelId, exampleIds, epochs, steps, batchSize, crop, learningRate, valFraction,
                maxMinutes, seed, version, makeDefault);
    }

    /** The same with batches of {@code batchSize} crops of {@code crop} px. */
    public FineTuneOptions withBatch(int batchSize, int crop) {
        return new FineTuneOptions(modelId, exampleIds, epochs, stepsPerEpoch, batchSize, crop, learningRate,
                valFraction, maxMinutes, seed, version, makeDefault);
    }

    /** The same, naming the new version (empty: the server's name) and making it the default or not. */
    public FineTuneOptions withVersion(String version, boolean makeDefault) {
        return new FineTuneOptions(modelId, exampleIds, epochs, stepsPerEpoch, batchSize, crop, learningRate,
                valFraction, maxMinutes, seed, version, makeDefault);
    }

    FineTuneRequest toProto() {
        FineTuneRequest.Builder b = FineTuneRequest.newBuilder()
                .setModelId(modelId)
                .addAllExampleIds(exampleIds)
                .setEpochs(epochs)
                .setStepsPerEpoch(stepsPerEpoch)
                .setBatchSize(batchSize)
                .setCrop(crop)
                .setSeed(seed)
                .setVersion(version)
                .setMakeDefault(makeDefault)
                .setClientContractMajor(Conventions.CONTRACT_MAJOR)
                .setClientContractMinor(Conventions.CONTRACT_MINOR);
        if (Double.isFinite(learningRate)) {
            b.setLearningRate(learningRate);
        }
        if (Double.isFinite(valFraction)) {
            b.setValFraction(valFraction);
        }
        if (Double.isFinite(maxMinutes)) {
            b.setMaxMinutes(maxMinutes);
        }
        return b.build();
    }
}
