package qupath.ext.roiseg;

import java.awt.image.BufferedImage;
import java.io.IOException;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;
import java.util.Objects;
import java.util.Optional;
import java.util.OptionalDouble;
import java.util.Set;
import org.roiseg.client.CancellationHandle;
import org.roiseg.client.ConfidenceMap;
import org.roiseg.client.ModelDescription;
import org.roiseg.client.ModelSegmentation;
import org.roiseg.client.ProgressListener;
import org.roiseg.client.RegionImage;
import org.roiseg.client.RoisegCancelledException;
import org.roiseg.client.RoisegClient;
import org.roiseg.client.SegmentOptions;
import org.roiseg.client.SegmentResult;
import org.roiseg.client.ServerInfo;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import qupath.lib.images.ImageData;
import qupath.lib.images.servers.ImageServer;
import qupath.lib.images.servers.PixelCalibration;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.regions.RegionRequest;
import qupath.lib.roi.interfaces.ROI;

/**
 * Segments annotations of one image with a roiseg server and places the results under them.
 * Runs on the calling thread (a background thread in the GUI); only the hierarchy changes go
 * through {@link #hierarchyThread(HierarchyThread)}.
 *
 * <p>For each annotation: the pixels of its bounding box (clipped to the image, on the ROI's z/t
 * plane) are read at the downsample that matches the model's µm/px and sent with the ROI's
 * geometry (holes included); or, when the server reads slides and the image is one local file, only
 * the file's path and the ROI are sent. The server's polygons become child annotations of the ROI,
 * replacing the ones an earlier run put there.
 */
public final class RoisegRunner {

    private static final Logger logger = LoggerFactory.getLogger(RoisegRunner.class);

    /** Runs hierarchy changes on the thread that must make them (the JavaFX thread in the GUI). */
    @FunctionalInterface
    public interface HierarchyThread {
        /** Runs {@code change} and waits for it; rethrows what it throws. */
        void runAndWait(Runnable change);
    }

    /** Hears about a run's progress; called on the runner's thread. */
    public interface Listener {
        /**
         * Progress of the run.
         *
         * @param message  what is being done
         * @param fraction 0..1, or negative when unknown
         */
        void progress(String message, double fraction);

        /** The classes of the objects placed (e.g. to list them in QuPath's class list). */
        default void classesUsed(Set<PathClass> classes) {
        }

        /** Where the models were unsure in a ROI, when confidence maps were asked for (called on the run's thread). */
        default void confidence(PathObject roi, List<ConfidenceMap> maps) {
        }
    }

    /**
     * What a run did.
     *
     * @param annotations  the annotations to segment
     * @param segmented    the annotations segmented
     * @param added        objects added
     * @param removed      earlier roiseg objects replaced
     * @param modelIds     the models that ran
     * @param areas        class areas per model over all annotations
     * @param warnings     messages for the user (e.g. annotations skipped)
     */
    public record Summary(int annotations, int segmented, int added, int removed, List<String> modelIds,
                          AreaSummary areas, List<String> warnings) {

        /** Keeps unmodifiable lists. */
        public Summary {
            modelIds = List.copyOf(modelIds);
            warnings = List.copyOf(warnings);
        }
    }

    private final ImageData<BufferedImage> imageData;
    private final ServerSettings settings;
    private final SegmentOptions options;
    private double userPixelSizeMicrons;
    private boolean nameObjectsByModel;
    private HierarchyThread hierarchyThread = Runnable::run;
    private Listener listener = (message, fraction) -> { };

    /**
     * A runner for one image.
     *
     * @param imageData the image and its hierarchy
     * @param settings  how to reach the server
     * @param options   the models and options; no model ids: the server's default model
     */
    public RoisegRunner(ImageData<BufferedImage> imageData, ServerSettings settings, SegmentOptions options) {
        this.imageData = Objects.requireNonNull(imageData, "imageData");
        this.settings = Objects.requireNonNull(settings, "settings");
        this.options = options == null ? SegmentOptions.defaults() : options;
    }

    /** The full-resolution pixel size to use instead of the image's (for uncalibrated images); 0: none. */
    public RoisegRunner pixelSizeMicrons(double micronsPerPixel) {
        this.userPixelSizeMicrons = micronsPerPixel;
        return this;
    }

    /** Whether objects are named after their model (when comparing models). */
    public RoisegRunner nameObjectsByModel(boolean name) {
        this.nameObjectsByModel = name;
        return this;
    }

    /** Where hierarchy changes run; default: the runner's thread. */
    public RoisegRunner hierarchyThread(HierarchyThread thread) {
        this.hierarchyThread = Objects.requireNonNull(thread, "thread");
        return this;
    }

    /** Who hears about progress. */
    public RoisegRunner listener(Listener listener) {
        this.listener = Objects.requireNonNull(listener, "listener");
        return this;
    }

    /**
     * The annotations among {@code objects} that can be segmented: annotations with an area ROI
     * (rectangle, ellipse, polygon, brush, with or without holes) that are not roiseg results.
     */
    public static List<PathObject> segmentableAnnotations(Collection<? extends PathObject> objects) {
        List<PathObject> annotations = new ArrayList<>();
        for (PathObject object : objects) {
            if (object != null && object.isAnnotation() && object.hasROI() && object.getROI().isArea()
                    && !object.getROI().isEmpty() && Replacement.isSegmentable(object.getMetadata())) {
                annotations.add(object);
            }
        }
        return annotations;
    }

    /**
     * The full-resolution pixel size of an image in µm/px: {@code userMicrons} when positive, else
     * the image's calibration, else empty (the user must be asked).
     */
    public static OptionalDouble pixelSizeMicrons(ImageServer<?> server, double userMicrons) {
        PixelCalibration calibration = server.getPixelCalibration();
        return PixelSizes.effective(userMicrons, calibration.hasPixelSizeMicrons(),
                calibration.getAveragedPixelSizeMicrons());
    }

    /**
     * Segments the segmentable annotations among {@code objects}, one after another, and places all
     * their results when the run ends: one change of the hierarchy, one undo step for the whole run.
     * A cancelled or failed run still places the results of the annotations it finished.
     *
     * @param objects the annotations (others are ignored)
     * @param cancel  cancels the run; annotations already done keep their results
     * @throws IllegalArgumentException         with a message for the user when there is nothing to
     *                                          segment or a setting or the region is not usable
     * @throws org.roiseg.client.RoisegException when the server fails or refuses
     * @throws RoisegCancelledException          when cancelled
     */
    public Summary run(Collection<? extends PathObject> objects, CancellationHandle cancel) {
        CancellationHandle handle = cancel == null ? new CancellationHandle() : cancel;
        List<PathObject> rois = segmentableAnnotations(objects);
        if (rois.isEmpty()) {
            throw new IllegalArgumentException("Select one or more area annotations (rectangle, ellipse, polygon "
                    + "or brush) to segment; roiseg's own results are not segmented again.");
        }
        ImageServer<BufferedImage> server = imageData.getServer();
        double pixelSize = requirePixelSize(server, userPixelSizeMicrons);
        List<String> warnings = new ArrayList<>();
        if (!server.isRGB()) {
            warnings.add("The image is not an 8-bit RGB image: roiseg's models expect brightfield (H&E) images, "
                    + "so its pixels were sent as they display in RGB; check the results.");
        }
        RunProgress progress = new RunProgress(rois.size());
        AreaSummary areas = new AreaSummary();
        // Results wait here and are placed together when the run ends, however it ends (finished,
        // cancelled or failed): one run is one change of the hierarchy, one undo step.
        Map<PathObject, List<PathObject>> results = new LinkedHashMap<>();
        ResultMapper.Placement placed = new ResultMapper.Placement(0, 0, Set.of());
        List<String> modelIds = List.of();
        listener.progress("Connecting to the roiseg server at " + settings.target(), -1);
        try (RoisegClient client = settings.clientBuilder().build()) {
            ServerInfo info = client.serverInfo();
            List<ModelDescription> models = ModelChoice.resolve(client.listModels(), options.modelIds());
            modelIds = models.stream().map(ModelDescription::id).toList();
            SegmentOptions runOptions = options.toBuilder().modelIds(modelIds).build();
            double modelMpp = Resolution.finestMicronsPerPixel(models);
            if (Resolution.needsUpsampling(modelMpp, pixelSize) && !runOptions.allowUpsample()) {
                throw new IllegalArgumentException(String.format(Locale.ROOT, "The image's pixels (%s \u00b5m/px) are "
                        + "coarser than the model's resolution (%s \u00b5m/px). Use a higher-resolution scan, or "
                        + "allow upsampling in Extensions > roiseg > Choose model.", PixelSizes.format(pixelSize),
                        PixelSizes.format(modelMpp)));
            }
            double downsample = Resolution.chooseDownsample(modelMpp, pixelSize);
            Optional<String> slidePath = slidePath(settings, server, info, warnings);
            logger.info("roiseg: {} annotation(s) with {} on {}, {} \u00b5m/px, downsample {}{}", rois.size(),
                    modelIds, settings.target(), PixelSizes.format(pixelSize), downsample,
                    slidePath.map(p -> ", server reads " + p).orElse(""));

            for (int i = 0; i < rois.size(); i++) {
                if (handle.isCancelled()) {
                    throw new RoisegCancelledException();
                }
                progress.startRoi(i);
                PathObject parent = rois.get(i);
                ROI roi = parent.getROI();
                String prefix = rois.size() > 1 ? String.format(Locale.ROOT, "Annotation %d of %d: ", i + 1,
                        rois.size()) : "";
                ProgressListener events = (stage, modelId, done, total, message) -> listener.progress(
                        progress.message(stage, modelId, done, total, message), progress.update(stage, done, total));
                SegmentResult result;
                if (slidePath.isPresent() && roi.getZ() == 0 && roi.getT() == 0) {
                    listener.progress(prefix + "sending the annotation", progress.fraction());
                    result = client.segmentSlide(slidePath.get(), pixelSize, roi.getGeometry(), runOptions, events,
                            handle);
                } else {
                    RegionRequest request = regionRequest(server, roi, downsample);
                    Optional<String> problem = regionProblem(request, downsample, pixelSize, modelMpp, info);
                    if (problem.isPresent()) {
                        if (rois.size() == 1) {
                            throw new IllegalArgumentException(problem.get());
                        }
                        warnings.add(prefix + problem.get());
                        continue;
                    }
                    listener.progress(prefix + "reading the pixels", progress.fraction());
                    RegionImage region = readRegion(server, request, pixelSize);
                    result = client.segmentRegion(region, roi.getGeometry(), runOptions, events, handle);
                }
                List<PathObject> created = ResultMapper.createObjects(ObjectSpec.of(result, nameObjectsByModel),
                        roi.getImagePlane());
                results.put(parent, created);
                areas.add(result);
                result.models().values().stream().flatMap(m -> m.notices().stream()).distinct()
                        .forEach(notice -> warnings.add(prefix + notice + "."));
                List<ConfidenceMap> maps = result.models().values().stream().map(ModelSegmentation::confidence)
                        .filter(Objects::nonNull).toList();
                if (!maps.isEmpty()) {
                    listener.confidence(parent, maps);
                }
                progress.finishRoi();
                listener.progress(prefix + created.size() + " objects", progress.fraction());
            }
        } finally {
            if (!results.isEmpty()) {
                ResultMapper.Placement[] placement = new ResultMapper.Placement[1];
                hierarchyThread.runAndWait(() -> placement[0] = ResultMapper.replaceChildren(
                        imageData.getHierarchy(), results, this));
                listener.classesUsed(placement[0].classes());
                placed = placement[0];
            }
        }
        return new Summary(rois.size(), results.size(), placed.added(), placed.removed(), modelIds, areas, warnings);
    }

    // ------------------------------------------------------------------ reading regions (also for corrections)

    /** The bounding box of {@code roi} at {@code downsample}, on its z/t plane, clipped to the image. */
    static RegionRequest regionRequest(ImageServer<BufferedImage> server, ROI roi, double downsample) {
        return RegionRequest.createInstance(server.getPath(), downsample, roi)
                .intersect2D(0, 0, server.getWidth(), server.getHeight());
    }

    /** Why the region cannot be sent (too large for the server or for QuPath's memory), if it cannot. */
    static Optional<String> regionProblem(RegionRequest request, double downsample, double pixelSize, double modelMpp,
                                          ServerInfo info) {
        return Resolution.checkRegion(request.getWidth(), request.getHeight(), downsample, pixelSize, modelMpp,
                info.maxRoiPixels(), Runtime.getRuntime().maxMemory() / 4);
    }

    /** Reads a region's pixels for the server. */
    static RegionImage readRegion(ImageServer<BufferedImage> server, RegionRequest request, double pixelSize) {
        BufferedImage pixels;
        try {
            pixels = server.readRegion(request);
        } catch (IOException e) {
            throw new IllegalStateException("QuPath could not read the image's pixels: " + e.getMessage(), e);
        }
        if (pixels == null) {
            throw new IllegalStateException("QuPath could not read the image's pixels for " + request);
        }
        return new RegionImage(pixels, request.getX(), request.getY(), request.getDownsample(), pixelSize,
                server.getWidth(), server.getHeight());
    }

    /** The image's pixel size for a run, with a message for the user when it has none. */
    static double requirePixelSize(ImageServer<BufferedImage> server, double userPixelSizeMicrons) {
        return pixelSizeMicrons(server, userPixelSizeMicrons).orElseThrow(() ->
                new IllegalArgumentException("The image has no pixel size in \u00b5m. Set it in the Image tab "
                        + "(Pixel width and height), or enter it when roiseg asks."));
    }

    /**
     * The slide path the server reads, when the settings ask for it and it can (else empty, with a
     * warning saying why).
     */
    static Optional<String> slidePath(ServerSettings settings, ImageServer<BufferedImage> server, ServerInfo info,
                                      List<String> warnings) {
        if (!settings.serverReadsSlide()) {
            return Optional.empty();
        }
        if (!info.slidePathsAllowed()) {
            warnings.add("The server does not read slide files (start it with --slide-root): the pixels were sent "
                    + "instead.");
            return Optional.empty();
        }
        Optional<String> path = SlidePaths.serverPath(server.getURIs(), settings.localPathPrefix(),
                settings.serverPathPrefix());
        if (path.isEmpty()) {
            warnings.add("The image is not a single local slide file: the pixels were sent instead.");
        }
        return path;
    }
}
