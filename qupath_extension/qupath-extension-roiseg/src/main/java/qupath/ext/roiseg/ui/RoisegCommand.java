package qupath.ext.roiseg.ui;

import java.awt.image.BufferedImage;
import java.util.Collection;
import java.util.List;
import java.util.Locale;
import java.util.OptionalDouble;
import java.util.ResourceBundle;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.function.Consumer;
import javafx.application.Platform;
import javafx.beans.property.ReadOnlyBooleanProperty;
import javafx.beans.property.ReadOnlyBooleanWrapper;
import javafx.concurrent.Task;
import org.roiseg.client.CancellationHandle;
import org.roiseg.client.ConfidenceMap;
import org.roiseg.client.FineTuneResult;
import org.roiseg.client.ModelDescription;
import org.roiseg.client.RoisegCancelledException;
import org.roiseg.client.RoisegClient;
import org.roiseg.client.RoisegException;
import org.roiseg.client.ServerInfo;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import qupath.ext.roiseg.FastTrackRunner;
import qupath.ext.roiseg.ModelChoice;
import qupath.ext.roiseg.PixelSizes;
import qupath.ext.roiseg.ResultMapper;
import qupath.ext.roiseg.RoisegRunner;
import qupath.ext.roiseg.ScriptSteps;
import qupath.ext.roiseg.ServerSettings;
import qupath.fx.dialogs.Dialogs;
import qupath.lib.common.ThreadTools;
import qupath.lib.gui.QuPathGUI;
import qupath.lib.images.ImageData;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.plugins.workflow.DefaultScriptableWorkflowStep;

/**
 * The commands of the Extensions &gt; roiseg menu. Each runs on the JavaFX thread, asks what it must
 * there (pixel size, models), then does the network and pixel work in a {@link Task} on one daemon
 * background thread, with a progress window whose Cancel button stops the server call.
 */
public class RoisegCommand {

    static final ResourceBundle resources = ResourceBundle.getBundle("qupath.ext.roiseg.ui.strings");

    private static final Logger logger = LoggerFactory.getLogger(RoisegCommand.class);

    private final QuPathGUI qupath;
    private final RoisegController controller;
    private final ConfidenceOverlays confidence;
    private final ExecutorService pool = Executors.newSingleThreadExecutor(
            ThreadTools.createThreadFactory("roiseg", true));
    private final ReadOnlyBooleanWrapper running = new ReadOnlyBooleanWrapper(false);

    /** Commands for this QuPath window. */
    public RoisegCommand(QuPathGUI qupath) {
        this.qupath = qupath;
        this.controller = new RoisegController(qupath.getStage());
        this.confidence = new ConfidenceOverlays(qupath, RoisegPrefs.confidenceOverlayProperty());
    }

    /** True while a segmentation or a server call runs (the menu items are disabled then). */
    public ReadOnlyBooleanProperty runningProperty() {
        return running.getReadOnlyProperty();
    }

    /** Extensions &gt; roiseg &gt; Segment selected annotations. */
    public void segmentSelected() {
        segment(true, RoisegPrefs.chosenModelIds(), false, resources.getString("title.segment"));
    }

    /** Extensions &gt; roiseg &gt; Segment all annotations in image. */
    public void segmentAll() {
        segment(false, RoisegPrefs.chosenModelIds(), false, resources.getString("title.segment"));
    }

    /** Extensions &gt; roiseg &gt; Compare models on selection. */
    public void compareModels() {
        String title = resources.getString("title.compare");
        if (selectedAnnotations(title) == null) {
            return;
        }
        fetchModels(title, models -> {
            var problem = ModelChoice.compareProblem(models);
            if (problem.isPresent()) {
                Dialogs.showWarningNotification(title, problem.get());
                return;
            }
            controller.chooseModelsToCompare(models, ModelChoice.parseIds(RoisegPrefs.compareModelIdsProperty().get()))
                    .ifPresent(ids -> {
                        RoisegPrefs.compareModelIdsProperty().set(ModelChoice.joinIds(ids));
                        segment(true, ids, true, title);
                    });
        });
    }

    /** Extensions &gt; roiseg &gt; Choose model. */
    public void chooseModel() {
        String title = resources.getString("title.models");
        fetchModels(title, models -> controller.chooseModel(ModelChoice.withVersions(models),
                RoisegPrefs.modelIdProperty().get())
                .ifPresent(model -> {
                    RoisegPrefs.modelIdProperty().set(model.id());
                    ClassList.add(model.classes().stream()
                            .map(c -> ResultMapper.pathClass(c.name(), c.rgb())).toList());
                    Dialogs.showInfoNotification(title, String.format(Locale.ROOT,
                            resources.getString("info.modelChosen"), ModelChoice.label(model)));
                }));
    }

    /** Extensions &gt; roiseg &gt; Server settings. */
    public void serverSettings() {
        controller.editServerSettings(RoisegPrefs.serverSettings(), this::testConnection)
                .ifPresent(RoisegPrefs::setServerSettings);
    }

    // ------------------------------------------------------------------ segmentation

    private void segment(boolean selectedOnly, List<String> modelIds, boolean compare, String title) {
        ImageData<BufferedImage> imageData = qupath.getImageData();
        if (imageData == null) {
            Dialogs.showWarningNotification(title, resources.getString("error.noImage"));
            return;
        }
        List<PathObject> rois;
        if (selectedOnly) {
            rois = selectedAnnotations(title);
            if (rois == null) {
                return;
            }
        } else {
            rois = RoisegRunner.segmentableAnnotations(imageData.getHierarchy().getAnnotationObjects());
            if (rois.isEmpty()) {
                Dialogs.showWarningNotification(title, resources.getString("error.noAnnotations"));
                return;
            }
        }
        OptionalDouble askedPixelSize = userPixelSize(imageData, title);
        if (askedPixelSize.isEmpty()) {
            return;
        }
        double userPixelSize = askedPixelSize.getAsDouble();
        ServerSettings settings = usableServerSettings(title);
        if (settings == null) {
            return;
        }
        RoisegRunner runner = new RoisegRunner(imageData, settings, RoisegPrefs.segmentOptions(modelIds))
                .pixelSizeMicrons(userPixelSize)
                .nameObjectsByModel(compare)
                .hierarchyThread(RoisegCommand::runOnFxThreadAndWait);
        SegmentTask task = new SegmentTask(runner, rois, imageData);
        double recordedPixelSize = userPixelSize;
        start(task, title, resources.getString("info.cancelled"), summary -> {
            Dialogs.showInfoNotification(title, String.format(Locale.ROOT, resources.getString("info.done"),
                    summary.segmented(), summary.annotations(), summary.added(), summary.removed()));
            if (!summary.warnings().isEmpty()) {
                Dialogs.showWarningNotification(title, String.join("\n", summary.warnings()));
            }
            if (compare && !summary.areas().isEmpty()) {
                controller.showComparison(summary.areas());
            }
            imageData.getHistoryWorkflow().addStep(new DefaultScriptableWorkflowStep(
                    resources.getString("workflow.step"),
                    ScriptSteps.segmentScript(selectedOnly, recordedPixelSize, summary.modelIds())));
        });
    }

    /** Segments on the background thread; Cancel stops the server call through the handle. */
    private final class SegmentTask extends Task<RoisegRunner.Summary> {

        private final RoisegRunner runner;
        private final List<PathObject> rois;
        private final CancellationHandle handle = new CancellationHandle();
        private final ImageData<BufferedImage> imageData;

        SegmentTask(RoisegRunner runner, List<PathObject> rois, ImageData<BufferedImage> imageData) {
            this.runner = runner;
            this.rois = List.copyOf(rois);
            this.imageData = imageData;
            updateMessage(resources.getString("progress.starting"));
        }

        @Override
        protected RoisegRunner.Summary call() {
            runner.listener(new RoisegRunner.Listener() {
                @Override
                public void progress(String message, double fraction) {
                    updateMessage(message);
                    updateProgress(fraction >= 0 ? fraction : -1, 1);
                }

                @Override
                public void classesUsed(Set<PathClass> classes) {
                    ClassList.add(classes);
                }

                @Override
                public void confidence(PathObject roi, List<ConfidenceMap> maps) {
                    confidence.add(imageData, roi, maps);
                }
            });
            return runner.run(rois, handle);
        }

        @Override
        protected void cancelled() {
            handle.cancel();
        }
    }

    // ------------------------------------------------------------------ fast track

    /**
     * Extensions &gt; roiseg &gt; Submit corrections: the selected ROI annotations with their classified
     * child annotations, as corrected, become training examples on the server.
     */
    public void submitCorrections() {
        String title = resources.getString("title.corrections");
        ImageData<BufferedImage> imageData = qupath.getImageData();
        List<PathObject> rois = selectedAnnotations(title);
        if (imageData == null || rois == null) {
            return;
        }
        OptionalDouble userPixelSize = userPixelSize(imageData, title);
        if (userPixelSize.isEmpty()) {
            return;
        }
        ServerSettings settings = usableServerSettings(title);
        if (settings == null) {
            return;
        }
        List<String> chosen = RoisegPrefs.chosenModelIds();
        FastTrackRunner runner = new FastTrackRunner(imageData, settings, "", chosen.isEmpty() ? "" : chosen.get(0),
                RoisegPrefs.allowUpsampleProperty().get()).pixelSizeMicrons(userPixelSize.getAsDouble());
        CancellationHandle handle = new CancellationHandle();
        Task<FastTrackRunner.Summary> task = new Task<>() {
            @Override
            protected FastTrackRunner.Summary call() {
                updateMessage(resources.getString("progress.starting"));
                runner.listener((message, fraction) -> {
                    updateMessage(message);
                    updateProgress(fraction >= 0 ? fraction : -1, 1);
                });
                return runner.submit(rois, handle);
            }

            @Override
            protected void cancelled() {
                handle.cancel();
            }
        };
        start(task, title, resources.getString("info.correctionsCancelled"), summary -> {
            Dialogs.showInfoNotification(title, summary.describe());
            if (!summary.warnings().isEmpty()) {
                Dialogs.showWarningNotification(title, String.join("\n", summary.warnings()));
            }
            if (!summary.efforts().isEmpty()) {
                controller.showEffort(summary.efforts());
            }
        });
    }

    /**
     * Extensions &gt; roiseg &gt; Fine-tune model: asks for the model and the length of the training,
     * then fine-tunes it on the server with progress; the new version is then offered in Choose model.
     */
    public void fineTuneModel() {
        String title = resources.getString("title.fineTune");
        ServerSettings settings = usableServerSettings(title);
        if (settings == null) {
            return;
        }
        fetchModels(title, models -> controller.askFineTune(ModelChoice.withVersions(models),
                RoisegPrefs.modelIdProperty().get()).ifPresent(options -> {
                    CancellationHandle handle = new CancellationHandle();
                    Task<FineTuneResult> task = new Task<>() {
                        @Override
                        protected FineTuneResult call() {
                            updateMessage(resources.getString("progress.fineTune"));
                            updateProgress(-1, 1);
                            return FastTrackRunner.fineTune(settings, options, progress -> {
                                updateMessage(progress.describe());
                                double f = progress.fraction();
                                updateProgress(f >= 0 ? f : -1, 1);
                            }, handle);
                        }

                        @Override
                        protected void cancelled() {
                            handle.cancel();
                        }
                    };
                    start(task, title, resources.getString("info.fineTuneCancelled"), result ->
                            Dialogs.showInfoNotification(title, String.format(Locale.ROOT,
                                    resources.getString("info.fineTuned"), result.model().id(), result.steps(),
                                    result.exampleIds().size(), Math.round(result.seconds()))));
                }));
    }

    // ------------------------------------------------------------------ server calls

    private void fetchModels(String title, Consumer<List<ModelDescription>> then) {
        ServerSettings settings = RoisegPrefs.serverSettings();
        Task<List<ModelDescription>> task = new Task<>() {
            @Override
            protected List<ModelDescription> call() {
                updateMessage(resources.getString("progress.models"));
                updateProgress(-1, 1);
                try (RoisegClient client = settings.clientBuilder().build()) {
                    return client.listModels();
                }
            }
        };
        start(task, title, null, then);
    }

    private void testConnection(ServerSettings settings, Consumer<String> report) {
        Task<String> task = new Task<>() {
            @Override
            protected String call() {
                try (RoisegClient client = settings.clientBuilder().build()) {
                    ServerInfo info = client.serverInfo();
                    List<ModelDescription> models = client.listModels();
                    return String.format(Locale.ROOT, resources.getString("settings.connected"),
                            info.serverVersion(), info.contractVersion(), info.device(), models.size(),
                            info.defaultModelId());
                }
            }
        };
        task.setOnSucceeded(e -> report.accept(task.getValue()));
        task.setOnFailed(e -> report.accept(userMessage(task.getException())));
        pool.execute(task);
    }

    /**
     * Runs a task on the background thread with a progress window, and the menu disabled meanwhile.
     * The window closes before {@code succeeded} runs (which may open a dialog); failures end in an
     * error notification.
     *
     * @param cancelledMessage notification when the user cancels; null for none
     */
    private <T> void start(Task<T> task, String title, String cancelledMessage, Consumer<T> succeeded) {
        RoisegProgressDialog dialog = new RoisegProgressDialog(qupath.getStage(), task);
        running.set(true);
        task.setOnSucceeded(e -> {
            running.set(false);
            dialog.hide();
            succeeded.accept(task.getValue());
        });
        task.setOnFailed(e -> {
            running.set(false);
            dialog.hide();
            showError(title, task.getException());
        });
        task.setOnCancelled(e -> {
            running.set(false);
            dialog.hide();
            if (cancelledMessage != null) {
                Dialogs.showInfoNotification(title, cancelledMessage);
            }
        });
        dialog.show();
        pool.execute(task);
    }

    // ------------------------------------------------------------------ helpers

    /**
     * The pixel size to use instead of the image's: 0 when the image has one, else what the user
     * types; empty (after telling the user) when they cancel or type something unusable.
     */
    private static OptionalDouble userPixelSize(ImageData<BufferedImage> imageData, String title) {
        OptionalDouble pixelSize = RoisegRunner.pixelSizeMicrons(imageData.getServer(), 0);
        if (pixelSize.isPresent()) {
            return OptionalDouble.of(0);
        }
        Double typed = Dialogs.showInputDialog(resources.getString("pixelSize.title"),
                resources.getString("pixelSize.prompt"), PixelSizes.SUGGESTED_MICRONS);
        if (typed == null) {
            return OptionalDouble.empty();
        }
        var problem = PixelSizes.validate(typed);
        if (problem.isPresent()) {
            Dialogs.showErrorNotification(title, problem.get());
            return OptionalDouble.empty();
        }
        return OptionalDouble.of(typed);
    }

    /** The server settings, or null (after telling the user) when they cannot be used. */
    private static ServerSettings usableServerSettings(String title) {
        ServerSettings settings = RoisegPrefs.serverSettings();
        if (!settings.problems().isEmpty()) {
            Dialogs.showErrorNotification(title, String.join(" ", settings.problems()));
            return null;
        }
        return settings;
    }

    /** The selected area annotations, or null (after telling the user) when there are none. */
    private List<PathObject> selectedAnnotations(String title) {
        ImageData<BufferedImage> imageData = qupath.getImageData();
        if (imageData == null) {
            Dialogs.showWarningNotification(title, resources.getString("error.noImage"));
            return null;
        }
        Collection<PathObject> selected = imageData.getHierarchy().getSelectionModel().getSelectedObjects();
        List<PathObject> rois = RoisegRunner.segmentableAnnotations(selected);
        if (rois.isEmpty()) {
            Dialogs.showWarningNotification(title, resources.getString("error.noSelection"));
            return null;
        }
        return rois;
    }

    /** Shows a failure as a notification with a message for the user, never a stack trace. */
    static void showError(String title, Throwable error) {
        Throwable e = unwrap(error);
        if (e instanceof RoisegCancelledException) {
            Dialogs.showInfoNotification(title, resources.getString("info.cancelled"));
            return;
        }
        if (e instanceof RoisegException || e instanceof IllegalArgumentException
                || e instanceof IllegalStateException) {
            logger.debug("roiseg: {}", e.getMessage(), e);
        } else {
            logger.error("roiseg failed", e);
        }
        Dialogs.showErrorNotification(title, userMessage(e));
    }

    /** The message to show for a failure. */
    static String userMessage(Throwable error) {
        Throwable e = unwrap(error);
        if (e instanceof RoisegException) {
            return ((RoisegException) e).getUserMessage();
        }
        if ((e instanceof IllegalArgumentException || e instanceof IllegalStateException) && e.getMessage() != null) {
            return e.getMessage();
        }
        return resources.getString("error.unexpected") + e;
    }

    private static Throwable unwrap(Throwable error) {
        Throwable e = error;
        while ((e instanceof CompletionException || e instanceof java.util.concurrent.ExecutionException)
                && e.getCause() != null) {
            e = e.getCause();
        }
        return e;
    }

    /** Runs a hierarchy change on the JavaFX thread and waits for it, rethrowing its failure. */
    static void runOnFxThreadAndWait(Runnable change) {
        if (Platform.isFxApplicationThread()) {
            change.run();
            return;
        }
        CompletableFuture<Void> done = new CompletableFuture<>();
        Platform.runLater(() -> {
            try {
                change.run();
                done.complete(null);
            } catch (Throwable t) {
                done.completeExceptionally(t);
            }
        });
        try {
            done.join();
        } catch (CompletionException e) {
            Throwable cause = e.getCause();
            if (cause instanceof RuntimeException) {
                throw (RuntimeException) cause;
            }
            if (cause instanceof Error) {
                throw (Error) cause;
            }
            throw e;
        }
    }
}
