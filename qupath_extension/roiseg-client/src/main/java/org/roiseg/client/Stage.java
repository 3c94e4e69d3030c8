package org.roiseg.client;

import org.roiseg.proto.v1.Progress;

/** What a segmentation is busy with, as reported to a {@link ProgressListener}. */
public enum Stage {
    /** The client sends the image to the server in chunks (tiles: chunks sent / total). */
    UPLOADING,
    /** The server waits for another segmentation to finish. */
    QUEUED,
    /** The server reads the region at the model's resolution. */
    READING,
    /** The server finds the tissue in the region. */
    TISSUE,
    /** The model runs over the region (tiles: tiles done / total). */
    INFERENCE,
    /** The server cleans up the class map (minimum sizes, hysteresis). */
    POSTPROCESSING,
    /** The server turns the class map into polygons. */
    VECTORIZING,
    /** A stage this client does not know (a newer server). */
    UNSPECIFIED;

    static Stage fromProto(org.roiseg.proto.v1.Stage stage) {
        switch (stage) {
            case STAGE_QUEUED: return QUEUED;
            case STAGE_READING: return READING;
            case STAGE_TISSUE: return TISSUE;
            case STAGE_INFERENCE: return INFERENCE;
            case STAGE_POSTPROCESSING: return POSTPROCESSING;
            case STAGE_VECTORIZING: return VECTORIZING;
            default: return UNSPECIFIED;
        }
    }

    static Stage of(Progress progress) {
        return fromProto(progress.getStage());
    }
}
