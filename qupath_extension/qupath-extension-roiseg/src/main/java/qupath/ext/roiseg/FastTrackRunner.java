package qupath.ext.roiseg;

import java.awt.image.BufferedImage;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Locale;
import java.util.Objects;
import java.util.Optional;
import org.roiseg.client.CancellationHandle;
import org.roiseg.client.CorrectionEffort;
import org.roiseg.client.Corrections;
import org.roiseg.client.FineTuneListener;
import org.roiseg.client.FineTuneOptions;
import org.roiseg.client.FineTuneResult;
import org.roiseg.client.ModelDescription;
import org.roiseg.client.RegionImage;
import org.roiseg.client.RoisegCancelledException;
import org.roiseg.client.RoisegClient;
import org.roiseg.client.ServerInfo;
import org.roiseg.client.SubmittedCorrections;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import qupath.lib.images.ImageData;
import qupath.lib.images.servers.ImageServer;
import qupath.lib.objects.PathObject;
import qupath.lib.regions.RegionRequest;
import qupath.lib.roi.interfaces.ROI;

/**
 * The fast track from QuPath (docs/fast-track.md): sends corrected ROIs to a roiseg server as
 * training examples (SubmitCorrections), and fine-tunes a model on them (FineTune). Runs on the
 * calling thread (a background thread in the GUI); it never changes the hierarchy.
 *
 * <p>For each ROI annotation: its classified area child annotations (roiseg's results as the user
 * corrected them and the user's own additions; unclassified objects are left out) go as GeoJSON,
 * with the ROI's pixels read as {@link RoisegRunner} reads them for segmentation (or the slide's
 * path when the server reads slides). The example is keyed by the image's URI and the ROI object's
 * id, so submitting a ROI again replaces its example.
 */
public final class FastTrackRunner {

    private static final Logger logger = LoggerFactory.getLogger(FastTrackRunner.class);

    /**
     * What a submission did.
     *
     * @param rois        the ROI annotations given
     * @param submitted   the ROIs stored as examples
     * @param replaced    of those, the ones that replaced an earlier example of the same ROI
     * @param annotations the annotations sent, all ROIs together
     * @param roisegMade  of those, roiseg's pre-annotations (kept or corrected)
     * @param modelId     the model the examples train
     * @param exampleIds  the stored examples' ids
     * @param efforts     how much each submitted ROI's pre-annotations were corrected, in submission order
     * @param warnings    messages for the user (e.g. ROIs skipped)
     */
    public record Summary(int rois, int submitted, int replaced, int annotations, int roisegMade, String modelId,
                          List<String> exampleIds, List<RoiEffort> efforts, List<String> warnings) {

        /** Keeps unmodifiable lists. */
        public Summary {
            exampleIds = List.copyOf(exampleIds);
            efforts = List.copyOf(efforts);
            warnings = List.copyOf(warnings);
        }

        /** One line for the user. */
        public String describe() {
            return String.format(Locale.ROOT, "%d of %d annotation(s) submitted as training examples of %s "
                    + "(%d replaced an earlier submission): %d object(s), %d of them roiseg's.", submitted, rois,
                    modelId.isEmpty() ? "the server's default model" : modelId, replaced, annotations, roisegMade);
        }
    }

    /**
     * The correction effort the server measured on one submitted ROI.
     *
     * @param roi    the ROI as the user knows it: its name, else its class and position
     * @param effort what the server measured
     */
    public record RoiEffort(String roi, CorrectionEffort effort) {
    }

    private final ImageData<BufferedImage> imageData;
    private final ServerSettings settings;
    private final String modelId;
    private final String chosenModelId;
    private final boolean allowUpsample;
    private double userPixelSizeMicrons;
    private RoisegRunner.Listener listener = (message, fraction) -> { };

    /**
     * A submitter for one image.
     *
     * @param imageData     the image and its hierarchy
     * @param settings      how to reach the server
     * @param modelId       the model the corrections train; empty: the one whose results they correct, else
     *                      {@code chosenModelId}
     * @param chosenModelId the model chosen in the preferences; empty: the server's default
     * @param allowUpsample accept images coarser than the model's resolution
     */
    public FastTrackRunner(ImageData<BufferedImage> imageData, ServerSettings settings, String modelId,
                           String chosenModelId, boolean allowUpsample) {
        this.imageData = Objects.requireNonNull(imageData, "imageData");
        this.settings = Objects.requireNonNull(settings, "settings");
        this.modelId = modelId == null ? "" : modelId;
        this.chosenModelId = chosenModelId == null ? "" : chosenModelId;
        this.allowUpsample = allowUpsample;
    }

    /** The full-resolution pixel size to use instead of the image's (for uncalibrated images); 0: none. */
    public FastTrackRunner pixelSizeMicrons(double micronsPerPixel) {
        this.userPixelSizeMicrons = micronsPerPixel;
        return this;
    }

    /** Who hears about progress. */
    public FastTrackRunner listener(RoisegRunner.Listener listener) {
        this.listener = Objects.requireNonNull(listener, "listener");
        return this;
    }

    /** A child of a ROI as {@link CorrectionFeatures} sees it. */
    static CorrectionFeatures.Child child(PathObject object) {
        ROI roi = object.getROI();
        var pathClass = object.getPathClass();
        return new CorrectionFeatures.Child(roi == null ? null : roi.getGeometry(), roi != null && roi.isArea(),
                pathClass == null ? null : pathClass.toString(), pathClass == null || pathClass.getColor() == null
                ? 0 : pathClass.getColor(), object.getMetadata(), object.getID().toString());
    }

    /** The labels of a ROI: its classified area child annotations, in the hierarchy's order. */
    public static List<CorrectionFeatures.Child> labels(PathObject roi) {
        List<CorrectionFeatures.Child> children = new ArrayList<>();
        for (PathObject child : roi.getChildObjectsAsArray()) {
            if (child.isAnnotation()) {
                children.add(child(child));
            }
        }
        return CorrectionFeatures.labels(children);
    }

    /** Which image the ROIs lie in, for the server: the image's first URI, else its server path. */
    static String imageId(ImageServer<BufferedImage> server) {
        var uris = server.getURIs();
        return uris == null || uris.isEmpty() ? server.getPath() : uris.iterator().next().toString();
    }

    /**
     * Submits the corrections of the ROI annotations among {@code objects}, one after another.
     *
     * @param objects the ROI annotations (others, and roiseg's own results, are ignored)
     * @param cancel  cancels the submissions; ROIs already sent stay stored
     * @throws IllegalArgumentException          with a message for the user when there is nothing to send
     * @throws org.roiseg.client.RoisegException when the server fails or refuses
     * @throws RoisegCancelledException          when cancelled
     */
    public Summary submit(Collection<? extends PathObject> objects, CancellationHandle cancel) {
        CancellationHandle handle = cancel == null ? new CancellationHandle() : cancel;
        List<PathObject> rois = RoisegRunner.segmentableAnnotations(objects);
        if (rois.isEmpty()) {
            throw new IllegalArgumentException("Select one or more segmented area annotations (ROIs) whose results "
                    + "you corrected.");
        }
        ImageServer<BufferedImage> server = imageData.getServer();
        double pixelSize = RoisegRunner.requirePixelSize(server, userPixelSizeMicrons);
        String imageId = imageId(server);
        List<String> warnings = new ArrayList<>();
        List<String> exampleIds = new ArrayList<>();
        List<RoiEffort> efforts = new ArrayList<>();
        int replaced = 0;
        int annotations = 0;
        int roisegMade = 0;
        String usedModel = modelId;
        listener.progress("Connecting to the roiseg server at " + settings.target(), -1);
        try (RoisegClient client = settings.clientBuilder().build()) {
            ServerInfo info = client.serverInfo();
            if (!info.examplesEnabled()) {
                throw new IllegalStateException("The roiseg server at " + settings.target() + " does not store "
                        + "corrections: start it with --dataset-dir DIR.");
            }
            List<ModelDescription> models = client.listModels();
            Optional<String> slidePath = RoisegRunner.slidePath(settings, server, info, warnings);
            for (int i = 0; i < rois.size(); i++) {
                if (handle.isCancelled()) {
                    throw new RoisegCancelledException();
                }
                PathObject parent = rois.get(i);
                ROI roi = parent.getROI();
                String prefix = rois.size() > 1 ? String.format(Locale.ROOT, "Annotation %d of %d: ", i + 1,
                        rois.size()) : "";
                double fraction = (double) i / rois.size();
                List<CorrectionFeatures.Child> labels = labels(parent);
                if (labels.isEmpty()) {
                    String problem = "the annotation has no classified annotations inside it to learn from.";
                    if (rois.size() == 1) {
                        throw new IllegalArgumentException("Nothing to submit: " + problem);
                    }
                    warnings.add(prefix + problem);
                    continue;
                }
                usedModel = CorrectionFeatures.modelId(modelId, labels, chosenModelId);
                ModelDescription model = ModelChoice.resolve(models,
                        usedModel.isEmpty() ? List.of() : List.of(usedModel)).get(0);
                Corrections corrections = new Corrections(usedModel, CorrectionFeatures.featureCollection(labels),
                        imageId, parent.getID().toString(), "", allowUpsample);
                SubmittedCorrections done;
                if (slidePath.isPresent() && roi.getZ() == 0 && roi.getT() == 0) {
                    listener.progress(prefix + "sending the corrections", fraction);
                    done = client.submitCorrectionsSlide(slidePath.get(), pixelSize, roi.getGeometry(), corrections,
                            handle);
                } else {
                    if (Resolution.needsUpsampling(model.mpp(), pixelSize) && !allowUpsample) {
                        throw new IllegalArgumentException(String.format(Locale.ROOT, "The image's pixels (%s "
                                + "\u00b5m/px) are coarser than the model's resolution (%s \u00b5m/px).",
                                PixelSizes.format(pixelSize), PixelSizes.format(model.mpp())));
                    }
                    double downsample = Resolution.chooseDownsample(model.mpp(), pixelSize);
                    RegionRequest request = RoisegRunner.regionRequest(server, roi, downsample);
                    Optional<String> problem = RoisegRunner.regionProblem(request, downsample, pixelSize, model.mpp(),
                            info);
                    if (problem.isPresent()) {
                        if (rois.size() == 1) {
                            throw new IllegalArgumentException(problem.get());
                        }
                        warnings.add(prefix + problem.get());
                        continue;
                    }
                    listener.progress(prefix + "reading the pixels", fraction);
                    RegionImage region = RoisegRunner.readRegion(server, request, pixelSize);
                    listener.progress(prefix + "sending the corrections", fraction);
                    done = client.submitCorrectionsRegion(region, roi.getGeometry(), corrections,
                            (stage, id, n, total, message) -> listener.progress(prefix + message, fraction), handle);
                }
                exampleIds.add(done.example().exampleId());
                efforts.add(new RoiEffort(roiLabel(parent, i), done.example().effort()));
                replaced += done.replaced() ? 1 : 0;
                annotations += labels.size();
                roisegMade += CorrectionFeatures.roisegMade(labels);
                usedModel = done.example().modelId();
                logger.info("roiseg: example {} of {} stored ({}): {}", done.example().exampleId(), usedModel,
                        done.replaced() ? "replaced" : "new", done.example().classAreas());
            }
        }
        listener.progress("Done", 1);
        return new Summary(rois.size(), exampleIds.size(), replaced, annotations, roisegMade, usedModel, exampleIds,
                efforts, warnings);
    }

    /** A ROI as the user knows it: its name, else "Annotation N" (1-based) with its class when it has one. */
    static String roiLabel(PathObject roi, int index) {
        String name = roi.getName();
        if (name != null && !name.isBlank()) {
            return name.strip();
        }
        var pathClass = roi.getPathClass();
        return "Annotation " + (index + 1) + (pathClass == null ? "" : " (" + pathClass + ")");
    }

    /**
     * Fine-tunes a model on its stored examples; the new version is served at once (choose it in
     * Extensions &gt; roiseg &gt; Choose model, or name it {@code id@version} in a script).
     *
     * @param settings how to reach the server
     * @param options  the start model and the training settings
     * @param listener progress; null for none
     * @param cancel   cancels the training (nothing is registered); null if not needed
     */
    public static FineTuneResult fineTune(ServerSettings settings, FineTuneOptions options, FineTuneListener listener,
                                          CancellationHandle cancel) {
        try (RoisegClient client = settings.clientBuilder().build()) {
            ServerInfo info = client.serverInfo();
            if (!info.examplesEnabled()) {
                throw new IllegalStateException("The roiseg server at " + settings.target() + " does not fine-tune: "
                        + "start it with --dataset-dir DIR and submit corrections first.");
            }
            FineTuneResult result = client.fineTune(options, listener, cancel);
            logger.info("roiseg: fine-tuned {} in {} step(s), {} s, on {} example(s): {}", result.model().id(),
                    result.steps(), Math.round(result.seconds()), result.exampleIds().size(), result.stopReason());
            return result;
        }
    }
}
