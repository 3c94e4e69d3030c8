package qupath.ext.roiseg;

import java.awt.image.BufferedImage;
import java.util.Arrays;
import java.util.Collection;
import java.util.List;
import java.util.Set;
import org.roiseg.client.CancellationHandle;
import org.roiseg.client.FineTuneOptions;
import org.roiseg.client.FineTuneResult;
import org.roiseg.client.RoisegClient;
import org.roiseg.client.TrainingExample;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import qupath.ext.roiseg.ui.ClassList;
import qupath.ext.roiseg.ui.RoisegPrefs;
import qupath.lib.images.ImageData;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.classes.PathClass;

/**
 * Entry point for QuPath scripts, and what the extension records in an image's workflow:
 *
 * <pre>{@code
 * qupath.ext.roiseg.RoisegScripts.segmentAnnotations(getCurrentImageData(), getAnnotationObjects(), 0)
 * qupath.ext.roiseg.RoisegScripts.segmentAnnotations(getCurrentImageData(), getSelectedObjects(), 0.25, 'model-a', 'model-b')
 * // the fast track (docs/fast-track.md; the server needs --dataset-dir): corrected ROIs become
 * // training examples, and a model is fine-tuned on them into a new version served at once
 * qupath.ext.roiseg.RoisegScripts.submitCorrections(getCurrentImageData(), getSelectedObjects(), '')
 * def result = qupath.ext.roiseg.RoisegScripts.fineTune('glas-unet-mobilenetv2', 3, 10, false)
 * qupath.ext.roiseg.RoisegScripts.segmentAnnotations(getCurrentImageData(), getSelectedObjects(), 0, result.model().id())
 * }</pre>
 *
 * The server settings (host, port, TLS, token) and the segmentation options are those of
 * Extensions &gt; roiseg, read from QuPath's preferences; the token never appears in a script.
 */
public final class RoisegScripts {

    private static final Logger logger = LoggerFactory.getLogger(RoisegScripts.class);

    private RoisegScripts() {
    }

    /**
     * Segments annotations on the calling thread and places the results under them.
     *
     * @param imageData        the image
     * @param annotations      the annotations to segment (objects that are not area annotations, and
     *                         roiseg's own results, are ignored)
     * @param pixelSizeMicrons full-resolution µm/px for an uncalibrated image; 0: the image's
     * @param modelIds         the models; none: the one chosen in Extensions &gt; roiseg &gt; Choose model
     * @return what was done; nothing when there was no annotation to segment
     */
    public static RoisegRunner.Summary segmentAnnotations(ImageData<BufferedImage> imageData,
                                                          Collection<? extends PathObject> annotations,
                                                          double pixelSizeMicrons, String... modelIds) {
        if (imageData == null) {
            throw new IllegalArgumentException("No image is open.");
        }
        if (RoisegRunner.segmentableAnnotations(annotations).isEmpty()) {
            logger.warn("roiseg: no area annotation to segment in {}", imageData.getServer().getPath());
            return new RoisegRunner.Summary(0, 0, 0, 0, List.of(), new AreaSummary(), List.of());
        }
        List<String> models = modelIds == null || modelIds.length == 0 ? RoisegPrefs.chosenModelIds()
                : Arrays.asList(modelIds);
        RoisegRunner runner = new RoisegRunner(imageData, RoisegPrefs.serverSettings(),
                RoisegPrefs.segmentOptions(models))
                .pixelSizeMicrons(pixelSizeMicrons)
                .nameObjectsByModel(models.size() > 1)
                .listener(new RoisegRunner.Listener() {
                    @Override
                    public void progress(String message, double fraction) {
                        logger.debug("roiseg: {}", message);
                    }

                    @Override
                    public void classesUsed(Set<PathClass> classes) {
                        ClassList.add(classes);
                    }
                });
        RoisegRunner.Summary summary = runner.run(annotations, new CancellationHandle());
        summary.warnings().forEach(w -> logger.warn("roiseg: {}", w));
        logger.info("roiseg: {} of {} annotation(s) segmented with {}: {} object(s) added, {} replaced",
                summary.segmented(), summary.annotations(), summary.modelIds(), summary.added(), summary.removed());
        return summary;
    }

    /**
     * Sends corrected ROIs to the server as training examples of a model (SubmitCorrections): for
     * each ROI annotation, its classified child annotations (roiseg's results as corrected and the
     * user's own; unclassified ones are left out) with the ROI's pixels. Submitting a ROI again
     * replaces its example. The server must run with {@code --dataset-dir}.
     *
     * @param imageData   the image
     * @param annotations the ROI annotations (others, and roiseg's own results, are ignored)
     * @param modelId     the model the examples train; empty or null: the model that made the ROI's roiseg
     *                    results, else the one chosen in Extensions &gt; roiseg &gt; Choose model
     * @return what was sent; nothing when there was no ROI annotation
     */
    public static FastTrackRunner.Summary submitCorrections(ImageData<BufferedImage> imageData,
                                                            Collection<? extends PathObject> annotations,
                                                            String modelId) {
        if (imageData == null) {
            throw new IllegalArgumentException("No image is open.");
        }
        if (RoisegRunner.segmentableAnnotations(annotations).isEmpty()) {
            logger.warn("roiseg: no ROI annotation to submit in {}", imageData.getServer().getPath());
            return new FastTrackRunner.Summary(0, 0, 0, 0, 0, modelId == null ? "" : modelId, List.of(), List.of(),
                    List.of());
        }
        List<String> chosen = RoisegPrefs.chosenModelIds();
        FastTrackRunner runner = new FastTrackRunner(imageData, RoisegPrefs.serverSettings(), modelId,
                chosen.isEmpty() ? "" : chosen.get(0), RoisegPrefs.allowUpsampleProperty().get())
                .listener((message, fraction) -> logger.debug("roiseg: {}", message));
        FastTrackRunner.Summary summary = runner.submit(annotations, new CancellationHandle());
        summary.warnings().forEach(w -> logger.warn("roiseg: {}", w));
        logger.info("roiseg: {}", summary.describe());
        if (!summary.efforts().isEmpty()) {
            logger.info("roiseg: {}", EffortTable.totals(summary.efforts()));
        }
        return summary;
    }

    /** {@link #submitCorrections(ImageData, Collection, String)} for the model that made the results. */
    public static FastTrackRunner.Summary submitCorrections(ImageData<BufferedImage> imageData,
                                                            Collection<? extends PathObject> annotations) {
        return submitCorrections(imageData, annotations, "");
    }

    /**
     * Fine-tunes a model on its stored examples, logging the progress, on the calling thread; the new
     * version ({@code id@version}) is served at once.
     *
     * @param modelId       the model to start from ({@code id} or {@code id@version}); empty: the server's default
     * @param epochs        epochs; 0: the server's default (3)
     * @param stepsPerEpoch steps per epoch; 0: the server's default (10)
     * @param makeDefault   whether the new version becomes the one the model's plain id selects
     * @return the new version and what it was trained on
     */
    public static FineTuneResult fineTune(String modelId, int epochs, int stepsPerEpoch, boolean makeDefault) {
        return fineTune(FineTuneOptions.of(modelId).withSteps(epochs, stepsPerEpoch).withVersion("", makeDefault));
    }

    /** Fine-tunes with all the settings of {@link FineTuneOptions}, logging the progress. */
    public static FineTuneResult fineTune(FineTuneOptions options) {
        return FastTrackRunner.fineTune(RoisegPrefs.serverSettings(), options,
                progress -> logger.info("roiseg fine-tuning: {}", progress.describe()), new CancellationHandle());
    }

    /** The stored training examples of a model (empty: the server's default), oldest first. */
    public static List<TrainingExample> listExamples(String modelId) {
        try (RoisegClient client = RoisegPrefs.serverSettings().clientBuilder().build()) {
            return client.listExamples(modelId);
        }
    }
}
