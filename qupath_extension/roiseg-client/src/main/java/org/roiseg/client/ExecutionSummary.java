package org.roiseg.client;

import org.roiseg.proto.v1.Execution;

/**
 * What the server actually did for one model.
 *
 * @param mppUsed         µm/px of the raster the model saw
 * @param sourceMpp       full-resolution µm/px of the slide
 * @param level           pyramid level the server read; -1 for pixels the client sent
 * @param levelDownsample downsample of the level read, or of the client's pixels
 * @param region          full-resolution bounding box that was segmented
 * @param rasterWidth     width of the segmented raster at model resolution
 * @param rasterHeight    height of the segmented raster at model resolution
 * @param tiles           number of tiles the model ran on
 * @param upsampled       whether the pixels were upsampled to reach the model's resolution
 * @param device          where the model ran
 * @param timings         seconds spent per stage
 */
public record ExecutionSummary(double mppUsed, double sourceMpp, int level, double levelDownsample, Region region,
                               int rasterWidth, int rasterHeight, int tiles, boolean upsampled, String device,
                               Timings timings) {

    /**
     * A rectangle in full-resolution pixels.
     *
     * @param x      left
     * @param y      top
     * @param width  width
     * @param height height
     */
    public record Region(double x, double y, double width, double height) {
    }

    /**
     * Seconds spent per stage.
     *
     * @param read        reading the pixels
     * @param tissue      finding tissue
     * @param inference   tiling, forward passes and blending
     * @param model       forward passes alone
     * @param postprocess post-processing
     * @param vectorize   vectorising
     * @param total       the whole model's work
     */
    public record Timings(double read, double tissue, double inference, double model, double postprocess,
                          double vectorize, double total) {
    }

    static ExecutionSummary fromProto(Execution e) {
        var t = e.getTimings();
        var r = e.getRegion();
        return new ExecutionSummary(e.getMppUsed(), e.getSourceMpp(), e.getLevel(), e.getLevelDownsample(),
                new Region(r.getX(), r.getY(), r.getWidth(), r.getHeight()), e.getRasterWidth(),
                e.getRasterHeight(), e.getTiles(), e.getUpsampled(), e.getDevice(),
                new Timings(t.getReadS(), t.getTissueS(), t.getInferenceS(), t.getModelS(), t.getPostprocessS(),
                        t.getVectorizeS(), t.getTotalS()));
    }
}
