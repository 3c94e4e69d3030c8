package qupath.ext.roiseg;

import java.awt.image.BufferedImage;
import java.util.Arrays;
import java.util.Collection;
import java.util.List;
import java.util.Set;
import org.roiseg.client.CancellationHandle;
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
}
