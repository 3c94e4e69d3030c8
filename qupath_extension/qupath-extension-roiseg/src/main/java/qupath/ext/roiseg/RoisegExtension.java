package qupath.ext.roiseg;

import java.util.ResourceBundle;
import javafx.scene.control.CheckMenuItem;
import javafx.scene.control.Menu;
import javafx.scene.control.MenuItem;
import javafx.scene.control.SeparatorMenuItem;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import qupath.ext.roiseg.ui.RoisegCommand;
import qupath.ext.roiseg.ui.RoisegPrefs;
import qupath.lib.common.Version;
import qupath.lib.gui.QuPathGUI;
import qupath.lib.gui.extensions.QuPathExtension;

/**
 * QuPath extension that segments annotations into tissue-class pre-annotations with a roiseg
 * server: Extensions &gt; roiseg. Registered in
 * {@code META-INF/services/qupath.lib.gui.extensions.QuPathExtension}.
 */
public class RoisegExtension implements QuPathExtension {

    private static final ResourceBundle resources = ResourceBundle.getBundle("qupath.ext.roiseg.ui.strings");

    private static final Logger logger = LoggerFactory.getLogger(RoisegExtension.class);

    private static final String EXTENSION_NAME = resources.getString("extension.title");

    private static final String EXTENSION_DESCRIPTION = resources.getString("extension.description");

    private static final Version EXTENSION_QUPATH_VERSION =
            Version.parse(resources.getString("extension.qupath.version"));

    private boolean isInstalled;

    @Override
    public void installExtension(QuPathGUI qupath) {
        if (isInstalled) {
            logger.debug("{} is already installed", getName());
            return;
        }
        isInstalled = true;
        addMenuItems(qupath);
    }

    private void addMenuItems(QuPathGUI qupath) {
        Menu menu = qupath.getMenu("Extensions>" + EXTENSION_NAME, true);
        RoisegCommand command = new RoisegCommand(qupath);
        MenuItem selected = item(command, "menu.segmentSelected", command::segmentSelected);
        MenuItem all = item(command, "menu.segmentAll", command::segmentAll);
        MenuItem compare = item(command, "menu.compare", command::compareModels);
        MenuItem corrections = item(command, "menu.submitCorrections", command::submitCorrections);
        MenuItem fineTune = item(command, "menu.fineTune", command::fineTuneModel);
        CheckMenuItem unsure = new CheckMenuItem(resources.getString("menu.confidence"));
        unsure.selectedProperty().bindBidirectional(RoisegPrefs.confidenceOverlayProperty());
        MenuItem choose = item(command, "menu.chooseModel", command::chooseModel);
        MenuItem settings = item(command, "menu.settings", command::serverSettings);
        menu.getItems().addAll(selected, all, compare, unsure, new SeparatorMenuItem(), corrections, fineTune,
                new SeparatorMenuItem(), choose, settings);
    }

    private static MenuItem item(RoisegCommand command, String key, Runnable action) {
        MenuItem item = new MenuItem(resources.getString(key));
        item.setOnAction(e -> action.run());
        item.disableProperty().bind(command.runningProperty());
        return item;
    }

    @Override
    public String getName() {
        return EXTENSION_NAME;
    }

    @Override
    public String getDescription() {
        return EXTENSION_DESCRIPTION;
    }

    @Override
    public Version getQuPathVersion() {
        return EXTENSION_QUPATH_VERSION;
    }
}
