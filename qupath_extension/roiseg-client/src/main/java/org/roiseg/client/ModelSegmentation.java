package org.roiseg.client;

import java.util.List;

/**
 * One model's result for a ROI.
 *
 * @param modelId          the model
 * @param modelVersion     its version
 * @param checkpointSha256 SHA-256 of its checkpoint file
 * @param features         the polygons, in full-resolution slide pixels
 * @param classAreas       total area and feature count per class
 * @param execution        what the server did
 * @param confidence       the model's confidence map of the ROI; null unless asked for
 *                         ({@link SegmentOptions#confidenceMap()})
 * @param notices          what the user should know about the result, as sentences (e.g. that part of the ROI
 *                         lies outside the image and was not segmented)
 */
public record ModelSegmentation(String modelId, String modelVersion, String checkpointSha256,
                                List<SegmentedFeature> features, List<ClassArea> classAreas,
                                ExecutionSummary execution, ConfidenceMap confidence, List<String> notices) {

    /** Keeps unmodifiable copies of the lists. */
    public ModelSegmentation {
        features = List.copyOf(features);
        classAreas = List.copyOf(classAreas);
        notices = notices == null ? List.of() : List.copyOf(notices);
    }
}
