package org.roiseg.client;

/**
 * Receives the progress of one segmentation, on the thread that called the client.
 * An exception thrown here cancels the segmentation and reaches the caller.
 */
@FunctionalInterface
public interface ProgressListener {

    /** A listener that ignores every event. */
    ProgressListener NONE = (stage, modelId, tilesDone, tilesTotal, message) -> { };

    /**
     * One progress event.
     *
     * @param stage      what is being done
     * @param modelId    the model it concerns; empty when it concerns no single model
     * @param tilesDone  units done so far (tiles, or upload chunks); 0 when not counted
     * @param tilesTotal units in all; 0 when not counted
     * @param message    a short description for people; may be empty
     */
    void onProgress(Stage stage, String modelId, int tilesDone, int tilesTotal, String message);
}
