package qupath.ext.roiseg.ui;

import java.util.ResourceBundle;
import javafx.concurrent.Task;
import javafx.concurrent.Worker;
import javafx.geometry.Insets;
import javafx.geometry.Pos;
import javafx.scene.Scene;
import javafx.scene.control.Button;
import javafx.scene.control.Label;
import javafx.scene.control.ProgressBar;
import javafx.scene.layout.HBox;
import javafx.scene.layout.VBox;
import javafx.stage.Modality;
import javafx.stage.Stage;
import javafx.stage.Window;

/**
 * A small window bound to a running task: its message, a progress bar and a Cancel button. It
 * closes itself when the task ends (succeeded, failed or cancelled). Create and show it on the
 * JavaFX thread.
 */
class RoisegProgressDialog {

    private final Stage stage;

    /**
     * @param owner the window it belongs to (QuPath's main window), or null
     * @param task  the task to follow; Cancel calls {@code task.cancel(false)}: the task stops the
     *              server call itself, without interrupting image reading
     */
    RoisegProgressDialog(Window owner, Task<?> task) {
        ResourceBundle resources = RoisegCommand.resources;
        Label message = new Label();
        message.textProperty().bind(task.messageProperty());
        message.setWrapText(true);
        message.setMinHeight(40);
        message.setPrefWidth(420);
        ProgressBar bar = new ProgressBar();
        bar.progressProperty().bind(task.progressProperty());
        bar.setMaxWidth(Double.MAX_VALUE);
        message.setLabelFor(bar);
        Button cancel = new Button(resources.getString("progress.cancel"));
        cancel.setCancelButton(true);
        cancel.setOnAction(e -> {
            cancel.setDisable(true);
            task.cancel(false);
        });
        HBox buttons = new HBox(cancel);
        buttons.setAlignment(Pos.CENTER_RIGHT);
        VBox root = new VBox(10, message, bar, buttons);
        root.setPadding(new Insets(12));

        stage = new Stage();
        stage.setTitle(resources.getString("progress.title"));
        stage.setResizable(false);
        if (owner != null) {
            stage.initOwner(owner);
        }
        // Modal, as in WSInfer: the hierarchy must not change under the run
        stage.initModality(Modality.APPLICATION_MODAL);
        stage.setScene(new Scene(root));
        stage.setOnCloseRequest(e -> {
            e.consume();
            cancel.fire();
        });
        task.stateProperty().addListener((v, o, n) -> {
            if (n == Worker.State.SUCCEEDED || n == Worker.State.FAILED || n == Worker.State.CANCELLED) {
                stage.hide();
            }
        });
    }

    /** Shows the window (without waiting). */
    void show() {
        stage.show();
    }

    /** Closes the window (it also closes itself when the task ends). */
    void hide() {
        stage.hide();
    }
}
