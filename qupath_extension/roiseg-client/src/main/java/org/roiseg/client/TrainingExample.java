package org.roiseg.client;

import java.util.List;
import org.roiseg.proto.v1.Example;

/**
 * One training example the server stores for a model (a corrected ROI): see docs/fast-track.md.
 *
 * @param exampleId    the example's id (a digest of image id and ROI key)
 * @param modelId      the model whose dataset holds it, without a version
 * @param imageId      which image the ROI lies in
 * @param roiKey       which ROI of the image
 * @param predictedBy  {@code id@version} of the model whose pre-annotations were corrected; may be empty
 * @param submittedAt  ISO 8601 time, UTC
 * @param classAreas   per class: area inside the ROI (µm²) and annotations kept
 * @param regionX      full-resolution x of the stored pixels' bounding box
 * @param regionY      full-resolution y of the stored pixels' bounding box
 * @param regionWidth  full-resolution width of the stored pixels' bounding box
 * @param regionHeight full-resolution height of the stored pixels' bounding box
 * @param rasterWidth  stored pixels' width at the model's resolution
 * @param rasterHeight stored pixels' height at the model's resolution
 * @param mpp          µm/px of the stored pixels
 * @param effort       how much the pre-annotations were corrected, measured when it was submitted
 */
public record TrainingExample(String exampleId, String modelId, String imageId, String roiKey, String predictedBy,
                              String submittedAt, List<ClassArea> classAreas, double regionX, double regionY,
                              double regionWidth, double regionHeight, int rasterWidth, int rasterHeight,
                              double mpp, CorrectionEffort effort) {

    /** Keeps an unmodifiable list. */
    public TrainingExample {
        classAreas = List.copyOf(classAreas);
    }

    static TrainingExample fromProto(Example e) {
        return new TrainingExample(e.getExampleId(), e.getModelId(), e.getImageId(), e.getRoiKey(),
                e.getPredictedBy(), e.getSubmittedAt(),
                e.getClassAreasList().stream().map(a -> new ClassArea(a.getName(), a.getAreaUm2(), a.getFeatures()))
                        .toList(),
                e.getRegion().getX(), e.getRegion().getY(), e.getRegion().getWidth(), e.getRegion().getHeight(),
                e.getRasterWidth(), e.getRasterHeight(), e.getMpp(), CorrectionEffort.fromProto(e.getEffort()));
    }

    /** The number of annotations kept, all classes together. */
    public int annotations() {
        return classAreas.stream().mapToInt(ClassArea::features).sum();
    }
}
