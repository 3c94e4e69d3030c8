package qupath.ext.roiseg.ui;

import java.awt.image.BufferedImage;
import java.util.List;
import java.util.Map;
import java.util.WeakHashMap;
import javafx.application.Platform;
import javafx.beans.property.BooleanProperty;
import org.roiseg.client.ConfidenceMap;
import qupath.ext.roiseg.ConfidenceLayer;
import qupath.lib.gui.QuPathGUI;
import qupath.lib.gui.viewer.QuPathViewer;
import qupath.lib.gui.viewer.overlays.BufferedImageOverlay;
import qupath.lib.images.ImageData;
import qupath.lib.objects.PathObject;

/**
 * Shows where the model was unsure ({@link ConfidenceLayer}) over the images in QuPath's viewers while
 * {@code shown} is true (Extensions &gt; roiseg &gt; Show where the model is unsure). Each image keeps its maps
 * while it stays open; they are drawn with QuPath's {@link BufferedImageOverlay}, so the viewer's overlay
 * opacity and "Show pixel classification" apply to them too. Runs on the JavaFX thread.
 */
final class ConfidenceOverlays {

    private final QuPathGUI qupath;
    private final BooleanProperty shown;
    private final Map<ImageData<BufferedImage>, ConfidenceLayer> layers = new WeakHashMap<>();
    private final Map<QuPathViewer, BufferedImageOverlay> installed = new WeakHashMap<>();

    ConfidenceOverlays(QuPathGUI qupath, BooleanProperty shown) {
        this.qupath = qupath;
        this.shown = shown;
        shown.addListener((v, o, n) -> refresh());
        qupath.imageDataProperty().addListener((v, o, n) -> refresh());
    }

    /** Adds a ROI's maps to its image's layer and shows them (called from any thread). */
    void add(ImageData<BufferedImage> imageData, PathObject roi, List<ConfidenceMap> maps) {
        Platform.runLater(() -> {
            ConfidenceLayer layer = layers.computeIfAbsent(imageData, d -> new ConfidenceLayer());
            maps.forEach(map -> layer.put(roi.getROI().getImagePlane(), map));
            refresh();
        });
    }

    /** Puts each viewer's overlay in line with {@code shown} and its image's layer. */
    private void refresh() {
        for (QuPathViewer viewer : qupath.getAllViewers()) {
            BufferedImageOverlay old = installed.remove(viewer);
            if (old != null) {
                viewer.getCustomOverlayLayers().remove(old);
            }
            ConfidenceLayer layer = viewer.getImageData() == null ? null : layers.get(viewer.getImageData());
            if (shown.get() && layer != null && !layer.isEmpty()) {
                BufferedImageOverlay overlay = new BufferedImageOverlay(viewer, viewer.getOverlayOptions(),
                        layer.regions());
                viewer.getCustomOverlayLayers().add(overlay);
                installed.put(viewer, overlay);
            }
        }
    }
}
