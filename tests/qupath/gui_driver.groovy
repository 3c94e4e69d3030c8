/*
 * Drives the roiseg extension inside a real QuPath GUI the way a pathologist does, and reports
 * what QuPath showed. Run as QuPath's startup script (-Dqupath.startup.script=THIS) with the image
 * opened by `-i IMAGE`; tests/qupath/test_gui.py starts it under Xvfb with a window manager.
 *
 * Every interaction goes through QuPath's own menu bar (the menu items a user clicks, Edit > Undo
 * included) and the extension's real dialogs; the driver only reads the hierarchy, the dialogs'
 * nodes and the screen. System properties:
 *   roiseg.test.out   folder for report.json and the screenshots (required)
 *   roiseg.test.port  port of the roiseg server on 127.0.0.1 (required)
 */
import qupath.lib.io.GsonTools
import javafx.application.Platform
import javafx.embed.swing.SwingFXUtils
import javafx.scene.Node
import javafx.scene.control.Button
import javafx.scene.control.Labeled
import javafx.scene.control.ListCell
import javafx.scene.control.Menu
import javafx.scene.control.MenuItem
import javafx.scene.control.TextField
import javafx.scene.robot.Robot
import javafx.scene.text.Text
import javafx.stage.Screen
import javafx.stage.Window
import javax.imageio.ImageIO
import java.util.concurrent.CompletableFuture
import java.util.concurrent.TimeUnit
import qupath.lib.common.GeneralTools
import qupath.lib.gui.QuPathGUI
import qupath.lib.objects.PathObject
import qupath.lib.objects.PathObjects
import qupath.lib.objects.classes.PathClass
import qupath.lib.regions.ImagePlane
import qupath.lib.roi.GeometryTools
import qupath.lib.roi.ROIs

def outDir = new File(System.getProperty('roiseg.test.out'))
int port = Integer.parseInt(System.getProperty('roiseg.test.port'))
outDir.mkdirs()
def qupath = QuPathGUI.getInstance()
def report = [qupath: GeneralTools.getVersion(), steps: [:], errors: [:], screenshots: []]

// ---- helpers ---------------------------------------------------------------------------------

/** Runs on the JavaFX thread and waits for the result. */
def fx = { Closure c ->
    def done = new CompletableFuture()
    Platform.runLater { try { done.complete(c()) } catch (Throwable t) { done.completeExceptionally(t) } }
    return done.get(120, TimeUnit.SECONDS)
}
/** Waits until cond (run on the JavaFX thread) is true. */
def waitFor = { String what, double seconds, Closure cond ->
    long end = System.nanoTime() + (long) (seconds * 1e9)
    while (System.nanoTime() < end) {
        if (fx(cond))
            return
        Thread.sleep(200)
    }
    throw new AssertionError("timed out after ${seconds} s waiting for ${what}")
}
/** A menu item by its path of texts in QuPath's menu bar. */
def menuItem = { List<String> path ->
    def items = qupath.getMenuBar().getMenus()
    MenuItem found = null
    for (String text in path) {
        found = items.find { it.getText() == text }
        if (found == null)
            throw new AssertionError("no menu item ${path}: at '${text}' there are ${items*.getText()}")
        items = found instanceof Menu ? found.getItems() : []
    }
    return found
}
/** Clicks a menu item (later: it may open a modal dialog, which blocks until closed). */
def click = { List<String> path -> fx { menuItem(path) }.with { item -> Platform.runLater { item.fire() } } }
def windowTitled = { String title -> Window.getWindows().find { it.isShowing() && it.hasProperty('title') && it.title == title } }
def screenshot = { String name ->
    fx {
        def bounds = Screen.getPrimary().getBounds()
        def image = new Robot().getScreenCapture(null, bounds)
        ImageIO.write(SwingFXUtils.fromFXImage(image, null), 'png', new File(outDir, name))
    }
    report.screenshots << name
}
/** Texts of the Labeled nodes under root that QuPath shows cut off (with an ellipsis) instead of whole. */
def truncatedTexts = { Node root ->
    root.lookupAll('*').findAll { it instanceof Labeled && it.getText() && isShown(it) }.findAll { Labeled l ->
        def shown = l.lookupAll('.text').find { it instanceof Text && it.getParent() == l }
        shown != null && shown.getText() != l.getText()
    }.collect { it.getText() }
}
/** Texts shown under root (visible Labeled nodes, not inside a collapsed pane). */
def shownTexts = { Node root -> root.lookupAll('*').findAll { it instanceof Labeled && it.getText() && isShown(it) }.collect { it.getText() } }
/** Every object of the hierarchy: identity, place, class, shape, and what roiseg wrote. */
def describe = { ->
    fx {
        def hierarchy = qupath.getImageData().getHierarchy()
        hierarchy.getFlattenedObjectList(null).findAll { !it.isRootObject() }.collect { PathObject p ->
            [id      : p.getID().toString(), parent: p.getParent()?.isRootObject() ? null : p.getParent()?.getID()?.toString(),
             class   : p.getPathClass()?.toString(), name: p.getName(), locked: p.isLocked(),
             wkt     : p.getROI().getGeometry().norm().toText(), plane: p.getROI().getImagePlane().toString(),
             metadata: new TreeMap(p.getMetadata() ?: [:])]
        }.sort { it.id }
    }
}
def roisegObjects = { List state -> state.findAll { it.metadata['roiseg.source'] == 'roiseg' } }
/** What differs between two descriptions, for the report. */
def difference = { List a, List b ->
    def onlyA = a.findAll { !(it in b) }, onlyB = b.findAll { !(it in a) }
    def brief = { o -> o.collectEntries { k, v -> [(k): v instanceof String && v.length() > 120 ? v.substring(0, 120) + '...' : v] } }
    "only before: ${onlyA.collect(brief)}; only after: ${onlyB.collect(brief)}"
}
def classColours = { -> fx { qupath.getAvailablePathClasses().findAll { it != null && it.getName() != null }.collectEntries { [(it.toString()): it.getColor()] } } }
def check = { String step, boolean ok, String detail -> report.steps[step] = [ok: ok, detail: detail] }
/** Runs one part of the session; a failure is reported and the session goes on with the next part. */
def phase = { String name, Closure body ->
    try {
        body()
    } catch (Throwable t) {
        def trace = new StringWriter()
        t.printStackTrace(new PrintWriter(trace))
        report.errors[name] = trace.toString().readLines().take(12).join('\n')
        fx { Window.getWindows().findAll { it.isShowing() && it != qupath.getStage() }.each { it.hide() } }
    }
}
/** Segment selected annotations through the menu, and wait until the run has ended. */
def segmentSelected = { ->
    def path = ['Extensions', 'roiseg', 'Segment selected annotations']
    fx { menuItem(path).fire() }
    waitFor('the segmentation to finish', 300) { !menuItem(path).isDisable() }
    Thread.sleep(500)
}

// ---- the session -----------------------------------------------------------------------------

Thread.start('roiseg-gui-test') {
    try {
        waitFor('the image to open', 120) { qupath.getImageData() != null && qupath.getViewer().getServer() != null }
        fx {  // the window fills the screen, as a pathologist works
            def stage = qupath.getStage(), bounds = Screen.getPrimary().getVisualBounds()
            stage.setX(bounds.getMinX()); stage.setY(bounds.getMinY())
            stage.setWidth(bounds.getWidth()); stage.setHeight(bounds.getHeight())
        }
        Thread.sleep(1500)
        fx {  // QuPath asks for the image type on opening: answer it as a user does (Apply)
            def prompt = windowTitled('Set image type')
            prompt?.getScene()?.getRoot()?.lookupAll('.button')?.find { it instanceof Button && it.getText() == 'Apply' }?.fire()
            prompt?.hide()
        }

        def coloursBefore = classColours()  // QuPath's classes as the user has them
        def roi = null, results = []
        phase('menu') {
            // Extensions > roiseg: the menu a user sees
            fx { qupath.getMenuBar().getMenus().find { it.getText() == 'Extensions' }.show() }
            Thread.sleep(800)
            fx {  // the pointer on Extensions > roiseg opens its submenu
                def popup = Window.getWindows().find { it instanceof javafx.scene.control.ContextMenu && it.isShowing() }
                def item = popup.getScene().getRoot().lookupAll('.menu').find { node ->
                    node.lookupAll('*').any { it instanceof Labeled && it.getText() == 'roiseg' } }
                def bounds = item.localToScreen(item.getBoundsInLocal())
                new Robot().mouseMove(bounds.getCenterX(), bounds.getCenterY())
            }
            Thread.sleep(1000)
            screenshot('menu.png')
            report.menu = fx { menuItem(['Extensions', 'roiseg']).getItems().collect { it.getText() } }
            fx { qupath.getMenuBar().getMenus().each { it.hide() } }
        }
        phase('settings') {
            // Server settings: point at the test server, Test connection, OK
            click(['Extensions', 'roiseg', 'Server settings\u2026'])
            waitFor('the server settings dialog', 30) { windowTitled('roiseg: server settings') != null }
            fx {
                def root = windowTitled('roiseg: server settings').getScene().getRoot()
                def fields = root.lookupAll('.text-field').findAll { it instanceof TextField && !(it instanceof javafx.scene.control.PasswordField) }
                // host, port, certificate, timeout, local prefix, server prefix: in grid order
                fields[0].setText('127.0.0.1')
                fields[1].setText(port as String)
                root.lookupAll('.button').find { it instanceof Button && it.getText() == 'Test connection' }.fire()
            }
            waitFor('Test connection to answer', 60) {
                windowTitled('roiseg: server settings').getScene().getRoot().lookupAll('.label').any { it.getText()?.startsWith('Connected to roiseg') }
            }
            Thread.sleep(500)
            screenshot('server-settings.png')
            def cut = fx { truncatedTexts(windowTitled('roiseg: server settings').getScene().getRoot()) }
            check('settings_not_truncated', cut.isEmpty(), "texts cut off: ${cut}")
            def heights = fx { [windowTitled('roiseg: server settings').getHeight(), Screen.getPrimary().getVisualBounds().getHeight()] }
            check('settings_fit_the_screen', heights[0] <= 0.8 * heights[1], "dialog ${heights[0]} px tall, screen ${heights[1]} px")
            fx { windowTitled('roiseg: server settings').getScene().getRoot().lookupButton(javafx.scene.control.ButtonType.OK).fire() }
            waitFor('the settings dialog to close', 10) { windowTitled('roiseg: server settings') == null }
        }
        phase('script') {
            // The workflow's one-liner, run as a script: results, the model's classes in the class list,
            // and no more undo steps than any script that adds one object with QuPath's own API (QuPath
            // 0.6+ records a step of its own after every script)
            def undoSteps = { Closure<Boolean> done ->
                int steps = 0
                while (!done() && steps < 4) {
                    fx { menuItem(['Edit', 'Undo']).fire() }
                    Thread.sleep(700)
                    steps++
                }
                return done() ? steps : -1
            }
            def named = { String name -> describe().find { it.name == name } }
            qupath.runScript(null, "def control = qupath.lib.objects.PathObjects.createAnnotationObject(" +
                    "qupath.lib.roi.ROIs.createRectangleROI(20, 20, 40, 40, qupath.lib.regions.ImagePlane.getDefaultPlane())); " +
                    "control.setName('control'); getCurrentHierarchy().addObject(control)")
            Thread.sleep(700)
            int scriptSteps = undoSteps { named('control') == null }
            report.undoStepsOfAScript = scriptSteps

            def server0 = fx { qupath.getImageData().getServer() }
            def scripted = PathObjects.createAnnotationObject(ROIs.createRectangleROI(server0.getWidth() * 0.55, server0.getHeight() * 0.6, 500, 400, ImagePlane.getDefaultPlane()))
            scripted.setName('scripted ROI')
            fx { qupath.getImageData().getHierarchy().addObject(scripted) }
            def classesBeforeScript = fx { qupath.getAvailablePathClasses().collect { it?.toString() } }
            def beforeScript = describe()
            qupath.runScript(null, "qupath.ext.roiseg.RoisegScripts.segmentAnnotations(getCurrentImageData(), " +
                    "getAnnotationObjects().findAll { it.getName() == 'scripted ROI' }, 0)")
            Thread.sleep(1000)
            def afterScript = describe()
            def scriptedResults = roisegObjects(afterScript).findAll { it.parent == scripted.getID().toString() }
            def scriptClasses = scriptedResults*.class.unique()
            def classesAfterScript = fx { qupath.getAvailablePathClasses().collect { it?.toString() } }
            check('script_adds_results', !scriptedResults.isEmpty(), "${scriptedResults.size()} objects from the one-liner")
            check('script_lists_classes', !scriptClasses.isEmpty() && classesAfterScript.containsAll(scriptClasses)
                    && !classesBeforeScript.containsAll(scriptClasses),
                    "result classes ${scriptClasses}; class list before ${classesBeforeScript}, after ${classesAfterScript}")
            int oneLinerSteps = undoSteps { roisegObjects(describe()).isEmpty() }
            check('script_undo_restores', scriptSteps > 0 && oneLinerSteps == scriptSteps && describe() == beforeScript,
                    "undo steps: the one-liner ${oneLinerSteps}, a script adding one object ${scriptSteps}; " + difference(beforeScript, describe()))
            (0..<oneLinerSteps).each {
                fx { menuItem(['Edit', 'Redo']).fire() }
                Thread.sleep(700)
            }
        }
        phase('choose_model') {
            // Choose model: what a pathologist needs, in a dialog that fits on the screen
            click(['Extensions', 'roiseg', 'Choose model\u2026'])
            waitFor('the model dialog', 60) { windowTitled('roiseg: choose model') != null }
            Thread.sleep(800)
            screenshot('choose-model.png')
            def modelDialog = fx {
                def window = windowTitled('roiseg: choose model')
                def root = window.getScene().getRoot()
                def list = root.lookupAll('.list-view').find()
                [height         : window.getHeight(), screenHeight: Screen.getPrimary().getVisualBounds().getHeight(),
                 truncated      : truncatedTexts(root),
                 cells          : root.lookupAll('.list-cell').findAll { it instanceof ListCell && it.getText() }.collect { it.getText() },
                 listScrollsSide: list.lookupAll('.scroll-bar').any { it.getOrientation() == javafx.geometry.Orientation.HORIZONTAL && it.isVisible() },
                 shown          : shownTexts(root)]
            }
            report.modelDialog = modelDialog
            fx { windowTitled('roiseg: choose model').getScene().getRoot().lookupButton(javafx.scene.control.ButtonType.OK).fire() }
            waitFor('the model dialog to close', 10) { windowTitled('roiseg: choose model') == null }
            report.classesAfterChoose = fx { qupath.getAvailablePathClasses().collect { it?.toString() } }
        }
        phase('segment') {
            // The user's own work: an earlier annotation, then the ROI to segment (a polygon with a hole)
            def server = fx { qupath.getImageData().getServer() }
            double w = server.getWidth(), h = server.getHeight()
            def mine = PathObjects.createAnnotationObject(ROIs.createRectangleROI(w * 0.05, h * 0.05, w * 0.1, h * 0.1, ImagePlane.getDefaultPlane()))
            mine.setName('my earlier annotation')
            fx { qupath.getImageData().getHierarchy().addObject(mine) }
            def factory = GeometryTools.getDefaultFactory()
            // on tissue of cmu_small_region.svs, in whole pixels (QuPath keeps undo states in float32)
            double x0 = Math.min(1150, w - 800), y0 = Math.min(1100, h - 700)
            def shell = factory.toGeometry(new org.locationtech.jts.geom.Envelope(x0, x0 + 700, y0, y0 + 600))
            def hole = factory.toGeometry(new org.locationtech.jts.geom.Envelope(x0 + 250, x0 + 400, y0 + 200, y0 + 350))
            roi = PathObjects.createAnnotationObject(GeometryTools.geometryToROI(shell.difference(hole), ImagePlane.getDefaultPlane()))
            roi.setName('my ROI')
            fx {
                qupath.getImageData().getHierarchy().addObject(roi)
                qupath.getImageData().getHierarchy().getSelectionModel().setSelectedObject(roi)
                def viewer = qupath.getViewer()
                viewer.setDownsampleFactor(1.15 * Math.max(roi.getROI().getBoundsWidth() / viewer.getView().getWidth(),
                        roi.getROI().getBoundsHeight() / viewer.getView().getHeight()))
                viewer.setCenterPixelLocation(roi.getROI().getCentroidX(), roi.getROI().getCentroidY())
                qupath.getOverlayOptions().setFillAnnotations(true)
            }
            def beforeRun = describe()

            // Run 1, then Edit > Undo and Edit > Redo
            segmentSelected()
            def afterRun = describe()
            results = roisegObjects(afterRun).findAll { !(it in beforeRun) }
            check('run_adds_results', !results.isEmpty() && results.every { it.parent == roi.getID().toString() },
                    "${results.size()} roiseg objects under the ROI")
            check('run_keeps_user_objects', beforeRun.every { it in afterRun }, 'every object from before the run is unchanged')
            fx { qupath.getViewer().getHierarchy().getSelectionModel().clearSelection() }
            Thread.sleep(6000)  // until QuPath's notifications have faded
            screenshot('result.png')
            def coloursAfter = classColours()
            def recoloured = coloursBefore.findAll { k, v -> coloursAfter.containsKey(k) && coloursAfter[k] != v }.keySet()
            check('no_class_recoloured', recoloured.isEmpty(), "classes recoloured: ${recoloured}")

            fx { menuItem(['Edit', 'Undo']).fire() }
            Thread.sleep(1000)
            def afterUndo = describe()
            check('undo_restores_before_run', afterUndo == beforeRun, difference(beforeRun, afterUndo))
            fx { menuItem(['Edit', 'Redo']).fire() }
            Thread.sleep(1000)
            def afterRedo = describe()
            check('redo_restores_run', afterRedo == afterRun, difference(afterRun, afterRedo))
        }
        phase('rerun') {
            // Run 2 replaces run 1's results; the user's object drawn inside a result stays
            def resultObject = fx {
                def myRoi = qupath.getImageData().getHierarchy().getFlattenedObjectList(null).find { it.getName() == 'my ROI' }
                myRoi.getChildObjects().find { it.getMetadata()?.get('roiseg.source') == 'roiseg' }
            }
            def inside = PathObjects.createAnnotationObject(ROIs.createEllipseROI(resultObject.getROI().getCentroidX() - 10,
                    resultObject.getROI().getCentroidY() - 10, 20, 20, ImagePlane.getDefaultPlane()))
            inside.setName('my object inside a result')
            fx {
                def hierarchy = qupath.getImageData().getHierarchy()
                hierarchy.addObjectBelowParent(resultObject, inside, true)
                hierarchy.getSelectionModel().setSelectedObject(hierarchy.getFlattenedObjectList(null).find { it.getName() == 'my ROI' })
            }
            def beforeRun2 = describe()
            segmentSelected()
            def afterRun2 = describe()
            def insideAfter = afterRun2.find { it.name == 'my object inside a result' }
            check('rerun_keeps_user_object', insideAfter != null && insideAfter.parent == roi.getID().toString(),
                    "user object inside a result: ${insideAfter?.subMap(['id', 'parent'])}, ROI ${roi.getID()}")
            check('rerun_replaces_results', roisegObjects(afterRun2).every { !(it.id in results*.id) } && !roisegObjects(afterRun2).isEmpty(),
                    'run 2 replaced run 1 objects')
            fx { menuItem(['Edit', 'Undo']).fire() }
            Thread.sleep(1000)
            check('undo_restores_before_rerun', describe() == beforeRun2, difference(beforeRun2, describe()))
        }
        phase('compare') {
            // Compare models on a one-model server: told at once, no dialog
            fx { qupath.getImageData().getHierarchy().getSelectionModel().setSelectedObject(qupath.getImageData().getHierarchy().getFlattenedObjectList(null).find { it.getName() == 'my ROI' }) }
            def compare = ['Extensions', 'roiseg', 'Compare models on selection']
            fx { menuItem(compare).fire() }
            waitFor('compare to answer', 60) { !menuItem(compare).isDisable() }
            Thread.sleep(1500)
            check('compare_one_model_no_dialog', fx { windowTitled('roiseg: compare models') } == null,
                    'no compare dialog opened on a one-model server')
            fx { Window.getWindows().findAll { it.hasProperty('title') && it.title == 'roiseg: compare models' }.each { it.hide() } }
        }
        phase('confidence') {
            // Show where the model is unsure: tick it in the menu, segment, see the overlay; untick hides it
            def toggle = ['Extensions', 'roiseg', 'Show where the model is unsure']
            def tick = { -> fx { menuItem(toggle).with { it.setSelected(!it.isSelected()); it.fire() } } }  // what a click does
            def overlays = { -> fx { qupath.getViewer().getCustomOverlayLayers().findAll {
                it instanceof qupath.lib.gui.viewer.overlays.BufferedImageOverlay }.collect { it.getRegionMap().keySet().collect { r ->
                    [r.getX(), r.getY(), r.getWidth(), r.getHeight()] } } } }
            def hierarchy = fx { qupath.getImageData().getHierarchy() }
            def myRoi = fx { hierarchy.getFlattenedObjectList(null).find { it.getName() == 'my ROI' } }
            fx { hierarchy.getSelectionModel().setSelectedObject(myRoi) }
            tick()
            report.confidenceTicked = fx { menuItem(toggle).isSelected() }
            segmentSelected()
            fx { hierarchy.getSelectionModel().clearSelection() }
            Thread.sleep(6000)  // until QuPath's notifications have faded
            screenshot('confidence.png')
            def shown = overlays()
            def bounds = myRoi.getROI()
            boolean covers = shown.size() == 1 && shown[0].size() == 1 && shown[0][0].with { r ->
                Math.abs(r[0] - bounds.getBoundsX()) <= 2 && Math.abs(r[1] - bounds.getBoundsY()) <= 2 &&
                        Math.abs(r[2] - bounds.getBoundsWidth()) <= 4 && Math.abs(r[3] - bounds.getBoundsHeight()) <= 4 }
            check('confidence_overlay_shown', report.confidenceTicked && covers,
                    "ticked ${report.confidenceTicked}; overlay regions ${shown}; ROI ${bounds.getBoundsX()}, ${bounds.getBoundsY()}, ${bounds.getBoundsWidth()} x ${bounds.getBoundsHeight()}")
            tick()
            Thread.sleep(500)
            def hidden = overlays()
            tick()
            Thread.sleep(500)
            def again = overlays()
            tick()  // left off, as found
            check('confidence_overlay_toggles', hidden.isEmpty() && again == shown && !fx { menuItem(toggle).isSelected() },
                    "unticked: ${hidden}; ticked again: ${again}")
        }
        phase('fast_track') {
            // Submit corrections: the ROI's results, as the user corrected them (one deleted), become a training
            // example, and the correction effort is shown
            def hierarchy = fx { qupath.getImageData().getHierarchy() }
            def myRoi = fx { hierarchy.getFlattenedObjectList(null).find { it.getName() == 'my ROI' } }
            def falsePositive = fx { myRoi.getChildObjects().find { it.getMetadata()?.get('roiseg.source') == 'roiseg' } }
            fx {
                hierarchy.removeObject(falsePositive, true)
                hierarchy.getSelectionModel().setSelectedObject(myRoi)
            }
            def beforeSubmit = describe()
            def submit = ['Extensions', 'roiseg', 'Submit corrections']
            fx { menuItem(submit).fire() }
            waitFor('the submission to finish', 120) { !menuItem(submit).isDisable() }
            Thread.sleep(1000)
            def examples = qupath.ext.roiseg.RoisegScripts.listExamples('')
            check('corrections_stored', examples.any { it.roiKey() == myRoi.getID().toString() },
                    "the server's examples: ${examples.collect { it.roiKey() }}, the ROI: ${myRoi.getID()}")
            check('corrections_keep_hierarchy', describe() == beforeSubmit, difference(beforeSubmit, describe()))
            waitFor('the correction effort', 30) { windowTitled('roiseg: correction effort') != null }
            Thread.sleep(800)
            screenshot('correction-effort.png')
            def effortTexts = fx { shownTexts(windowTitled('roiseg: correction effort').getScene().getRoot()) }
            report.effort = effortTexts
            def totals = effortTexts.find { it.startsWith('Correction effort over 1 annotation(s)') }
            check('correction_effort_shown', totals != null && totals.contains(' 1 deleted; 0 added') && effortTexts.contains('All classes'),
                    "the effort dialog shows ${effortTexts}")
            fx { windowTitled('roiseg: correction effort').getScene().getRoot().lookupButton(javafx.scene.control.ButtonType.OK).fire() }

            // Fine-tune model…: one epoch of two steps; the new version is then offered in Choose model
            click(['Extensions', 'roiseg', 'Fine-tune model\u2026'])
            waitFor('the fine-tune dialog', 60) { windowTitled('roiseg: fine-tune model') != null }
            Thread.sleep(500)
            fx {
                def root = windowTitled('roiseg: fine-tune model').getScene().getRoot()
                root.lookupAll('.spinner').each { spinner ->
                    def row = javafx.scene.layout.GridPane.getRowIndex(spinner)
                    spinner.getValueFactory().setValue(row == 1 ? 1 : 2)
                }
                root.lookupButton(javafx.scene.control.ButtonType.OK).fire()
            }
            def fineTune = ['Extensions', 'roiseg', 'Fine-tune model\u2026']
            Thread.sleep(500)
            waitFor('the fine-tuning to finish', 300) { !menuItem(fineTune).isDisable() }
            Thread.sleep(1000)
            click(['Extensions', 'roiseg', 'Choose model\u2026'])
            waitFor('the model dialog', 60) { windowTitled('roiseg: choose model') != null }
            Thread.sleep(800)
            def cells = fx {
                def root = windowTitled('roiseg: choose model').getScene().getRoot()
                def found = root.lookupAll('.list-cell').findAll { it instanceof ListCell && it.getText() }.collect { it.getText() }
                root.lookupButton(javafx.scene.control.ButtonType.CANCEL).fire()
                found
            }
            waitFor('the model dialog to close', 10) { windowTitled('roiseg: choose model') == null }
            report.modelsAfterFineTune = cells
            check('fine_tune_version_offered', cells.any { it.contains('version 0.4.0-ft') }, "Choose model lists ${cells}")
        }
        report.ok = true
    } catch (Throwable t) {
        report.ok = false
        def trace = new StringWriter()
        t.printStackTrace(new PrintWriter(trace))
        report.error = trace.toString()
    } finally {
        new File(outDir, "report.json").text = GsonTools.getInstance(true).toJson(report)
        System.exit(0)
    }
}

/** Whether a node and all its ancestors are visible (a collapsed pane's content is not shown). */
static boolean isShown(Node node) {
    for (Node n = node; n != null; n = n.getParent()) {
        if (!n.isVisible())
            return false
        if (n instanceof javafx.scene.control.TitledPane && !n.isExpanded() && n != node && !isTitle(n, node))
            return false
    }
    return true
}

static boolean isTitle(javafx.scene.control.TitledPane pane, Node node) {
    def title = pane.lookup('.title')
    for (Node n = node; n != null; n = n.getParent()) {
        if (n == title)
            return true
    }
    return false
}
