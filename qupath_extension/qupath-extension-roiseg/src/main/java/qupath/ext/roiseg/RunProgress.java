package qupath.ext.roiseg;

import java.util.Locale;
import org.roiseg.client.Stage;

/**
 * Turns the server's progress events for one ROI of several into one fraction and one message for
 * a progress bar. Plain Java, no QuPath classes. Not thread-safe: one per run.
 */
public final class RunProgress {

    private final int rois;
    private int roi;
    private double withinRoi;

    /** Progress over {@code rois} ROIs (at least 1). */
    public RunProgress(int rois) {
        this.rois = Math.max(1, rois);
    }

    /** Starts ROI {@code index} (0-based). */
    public void startRoi(int index) {
        roi = Math.max(0, Math.min(index, rois - 1));
        withinRoi = 0;
    }

    /** Marks the current ROI done. */
    public void finishRoi() {
        withinRoi = 1;
    }

    /**
     * Records one progress event and returns the overall fraction (0..1), which never goes back
     * within a ROI (several models each restart their stages).
     */
    public double update(Stage stage, int done, int total) {
        withinRoi = Math.max(withinRoi, stageFraction(stage, done, total));
        return fraction();
    }

    /** The overall fraction done, 0..1. */
    public double fraction() {
        return Math.min(1.0, (roi + withinRoi) / rois);
    }

    /** How far into one ROI's segmentation a stage is, 0..1. */
    static double stageFraction(Stage stage, int done, int total) {
        double part = total > 0 ? Math.max(0, Math.min(1, done / (double) total)) : 0;
        switch (stage) {
            case UPLOADING: return 0.10 * part;
            case QUEUED: return 0.10;
            case READING: return 0.12;
            case TISSUE: return 0.15;
            case INFERENCE: return 0.20 + 0.65 * part;
            case POSTPROCESSING: return 0.88;
            case VECTORIZING: return 0.94;
            default: return 0;
        }
    }

    /** The message for the progress dialog, e.g. "Annotation 2 of 5: model x: inference 12/40". */
    public String message(Stage stage, String modelId, int done, int total, String serverMessage) {
        StringBuilder sb = new StringBuilder();
        if (rois > 1) {
            sb.append(String.format(Locale.ROOT, "Annotation %d of %d: ", roi + 1, rois));
        }
        if (modelId != null && !modelId.isEmpty()) {
            sb.append(modelId).append(": ");
        }
        sb.append(stage.name().toLowerCase(Locale.ROOT));
        if (total > 0) {
            sb.append(' ').append(done).append('/').append(total);
        }
        if (serverMessage != null && !serverMessage.isBlank() && stage != Stage.INFERENCE) {
            sb.append(" \u2013 ").append(serverMessage.strip());
        }
        return sb.toString();
    }
}
