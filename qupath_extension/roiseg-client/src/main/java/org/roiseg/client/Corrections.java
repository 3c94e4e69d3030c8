package org.roiseg.client;

import java.util.Objects;

/**
 * Corrected annotations of one ROI, to be stored as a training example (SubmitCorrections).
 *
 * @param modelId       the model they train; empty: the server's default ({@code id@version} counts for {@code id})
 * @param geojson       QuPath GeoJSON (a FeatureCollection, a Feature or a list of Features) of the
 *                      corrected annotations in full-resolution pixels; classified polygons are the labels
 * @param imageId       which image the ROI lies in (e.g. the image's URI); required when the client sends
 *                      the pixels, else empty for the slide path
 * @param roiKey        which ROI of the image (e.g. the QuPath ROI object's id); empty: the ROI's outline
 * @param predictedBy   {@code id@version} of the model whose pre-annotations were corrected; empty: the
 *                      first roiseg object's
 * @param allowUpsample accept images coarser than the model's resolution
 */
public record Corrections(String modelId, String geojson, String imageId, String roiKey, String predictedBy,
                          boolean allowUpsample) {

    /** Turns nulls into empty strings; the GeoJSON must be given. */
    public Corrections {
        modelId = modelId == null ? "" : modelId.strip();
        Objects.requireNonNull(geojson, "geojson");
        imageId = imageId == null ? "" : imageId;
        roiKey = roiKey == null ? "" : roiKey;
        predictedBy = predictedBy == null ? "" : predictedBy;
    }

    /** Corrections of a model with an image id and ROI key, the rest by default. */
    public static Corrections of(String modelId, String geojson, String imageId, String roiKey) {
        return new Corrections(modelId, geojson, imageId, roiKey, "", false);
    }
}
