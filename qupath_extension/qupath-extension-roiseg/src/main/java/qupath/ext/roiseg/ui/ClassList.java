package qupath.ext.roiseg.ui;

import java.util.Collection;
import java.util.List;
import javafx.application.Platform;
import qupath.lib.gui.QuPathGUI;
import qupath.lib.objects.classes.PathClass;

/**
 * QuPath's class list (Annotations tab): the classes of roiseg's results are listed there, whether
 * the menu or a script segmented, so the user can select, hide and reuse them.
 */
public final class ClassList {

    private ClassList() {
    }

    /**
     * Lists the classes in the QuPath window's class list, after those already there; does nothing
     * without a window (headless scripts). Any thread.
     */
    public static void add(Collection<PathClass> classes) {
        QuPathGUI qupath = QuPathGUI.getInstance();
        if (qupath == null || classes.isEmpty()) {
            return;
        }
        List<PathClass> toAdd = List.copyOf(classes);
        Runnable add = () -> {
            var available = qupath.getAvailablePathClasses();
            for (PathClass pathClass : toAdd) {
                if (pathClass != null && !available.contains(pathClass)) {
                    available.add(pathClass);
                }
            }
        };
        if (Platform.isFxApplicationThread()) {
            add.run();
        } else {
            Platform.runLater(add);
        }
    }
}
