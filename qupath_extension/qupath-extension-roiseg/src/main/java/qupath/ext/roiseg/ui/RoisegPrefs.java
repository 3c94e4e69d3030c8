package qupath.ext.roiseg.ui;

import java.util.Collection;
import java.util.List;
import javafx.beans.property.BooleanProperty;
import javafx.beans.property.DoubleProperty;
import javafx.beans.property.IntegerProperty;
import javafx.beans.property.StringProperty;
import org.roiseg.client.RoisegClient;
import org.roiseg.client.SegmentOptions;
import qupath.ext.roiseg.ModelChoice;
import qupath.ext.roiseg.ServerSettings;
import qupath.lib.gui.prefs.PathPrefs;

/**
 * The extension's persistent preferences (QuPath's {@link PathPrefs}, kept between sessions).
 * The access token is stored like every QuPath preference, in the user's Java preferences, in
 * clear text: use a token meant for this purpose only.
 */
public final class RoisegPrefs {

    private static final StringProperty host = PathPrefs.createPersistentPreference(
            "roiseg.server.host", ServerSettings.DEFAULT_HOST);
    private static final IntegerProperty port = PathPrefs.createPersistentPreference(
            "roiseg.server.port", RoisegClient.DEFAULT_PORT);
    private static final BooleanProperty tls = PathPrefs.createPersistentPreference(
            "roiseg.server.tls", false);
    private static final StringProperty trustCertificate = PathPrefs.createPersistentPreference(
            "roiseg.server.trustCertificate", "");
    private static final StringProperty token = PathPrefs.createPersistentPreference(
            "roiseg.server.token", "");
    private static final IntegerProperty timeoutMinutes = PathPrefs.createPersistentPreference(
            "roiseg.server.timeoutMinutes", ServerSettings.DEFAULT_TIMEOUT_MINUTES);
    private static final BooleanProperty serverReadsSlide = PathPrefs.createPersistentPreference(
            "roiseg.server.readsSlide", false);
    private static final StringProperty localPathPrefix = PathPrefs.createPersistentPreference(
            "roiseg.server.localPathPrefix", "");
    private static final StringProperty serverPathPrefix = PathPrefs.createPersistentPreference(
            "roiseg.server.serverPathPrefix", "");

    private static final StringProperty modelId = PathPrefs.createPersistentPreference(
            "roiseg.model", "");
    private static final StringProperty compareModelIds = PathPrefs.createPersistentPreference(
            "roiseg.compareModels", "");
    private static final BooleanProperty includeBackground = PathPrefs.createPersistentPreference(
            "roiseg.includeBackground", false);
    private static final BooleanProperty allClasses = PathPrefs.createPersistentPreference(
            "roiseg.allClasses", false);
    private static final BooleanProperty hysteresis = PathPrefs.createPersistentPreference(
            "roiseg.hysteresis", false);
    private static final BooleanProperty allowUpsample = PathPrefs.createPersistentPreference(
            "roiseg.allowUpsample", false);
    private static final BooleanProperty confidenceOverlay = PathPrefs.createPersistentPreference(
            "roiseg.confidenceOverlay", false);
    private static final DoubleProperty reviewBelow = PathPrefs.createPersistentPreference(
            "roiseg.reviewBelow", 0.0);

    private RoisegPrefs() {
    }

    /** The server settings as stored. */
    public static ServerSettings serverSettings() {
        return new ServerSettings(host.get(), port.get(), tls.get(), trustCertificate.get(), token.get(),
                timeoutMinutes.get(), serverReadsSlide.get(), localPathPrefix.get(), serverPathPrefix.get());
    }

    /** Stores server settings. */
    public static void setServerSettings(ServerSettings settings) {
        host.set(settings.host());
        port.set(settings.port());
        tls.set(settings.tls());
        trustCertificate.set(settings.trustCertificate());
        token.set(settings.bearerToken());
        timeoutMinutes.set(settings.timeoutMinutes());
        serverReadsSlide.set(settings.serverReadsSlide());
        localPathPrefix.set(settings.localPathPrefix());
        serverPathPrefix.set(settings.serverPathPrefix());
    }

    /** The chosen model id; empty: the server's default model. */
    public static StringProperty modelIdProperty() {
        return modelId;
    }

    /** The chosen model as a list (empty: the server's default). */
    public static List<String> chosenModelIds() {
        return ModelChoice.parseIds(modelId.get());
    }

    /** The models last compared, comma-separated. */
    public static StringProperty compareModelIdsProperty() {
        return compareModelIds;
    }

    /** Whether results include the ROI's non-tissue area as class Background. */
    public static BooleanProperty includeBackgroundProperty() {
        return includeBackground;
    }

    /** Whether results include the models' catch-all classes (the rest of the tissue, e.g. "Other tissue"). */
    public static BooleanProperty allClassesProperty() {
        return allClasses;
    }

    /** Whether hysteresis thresholding of the model's tumour class is on. */
    public static BooleanProperty hysteresisProperty() {
        return hysteresis;
    }

    /** Whether images coarser than the model's resolution are accepted (and upsampled by the server). */
    public static BooleanProperty allowUpsampleProperty() {
        return allowUpsample;
    }

    /**
     * Whether segmentations return where the model is unsure and the viewer shows it
     * (Extensions &gt; roiseg &gt; Show where the model is unsure).
     */
    public static BooleanProperty confidenceOverlayProperty() {
        return confidenceOverlay;
    }

    /** Objects whose mean class probability is below this are flagged for review; 0: none. */
    public static DoubleProperty reviewBelowProperty() {
        return reviewBelow;
    }

    /** The segmentation options as stored, for these models (empty: the server's default). */
    public static SegmentOptions segmentOptions(Collection<String> modelIds) {
        return SegmentOptions.builder()
                .modelIds(modelIds)
                .includeBackground(includeBackground.get())
                .allClasses(allClasses.get())
                .hysteresis(hysteresis.get())
                .allowUpsample(allowUpsample.get())
                .confidenceMap(confidenceOverlay.get())
                .reviewBelow(reviewBelow.get() > 0 && reviewBelow.get() <= 1 ? reviewBelow.get() : null)
                .build();
    }
}
