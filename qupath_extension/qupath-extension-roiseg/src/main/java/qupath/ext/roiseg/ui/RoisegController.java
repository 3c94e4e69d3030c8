package qupath.ext.roiseg.ui;

import java.io.File;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Optional;
import java.util.ResourceBundle;
import java.util.function.BiConsumer;
import java.util.function.Consumer;
import javafx.event.ActionEvent;
import javafx.geometry.Insets;
import javafx.geometry.Pos;
import javafx.scene.Node;
import javafx.scene.control.Button;
import javafx.scene.control.ButtonType;
import javafx.scene.control.CheckBox;
import javafx.scene.control.Dialog;
import javafx.scene.control.Label;
import javafx.scene.control.ListCell;
import javafx.scene.control.ListView;
import javafx.scene.control.PasswordField;
import javafx.scene.control.ScrollPane;
import javafx.scene.control.Spinner;
import javafx.scene.control.TextField;
import javafx.scene.control.TitledPane;
import javafx.scene.control.Tooltip;
import javafx.scene.layout.ColumnConstraints;
import javafx.scene.layout.GridPane;
import javafx.scene.layout.HBox;
import javafx.scene.layout.Priority;
import javafx.scene.layout.Region;
import javafx.scene.layout.VBox;
import javafx.scene.paint.Color;
import javafx.scene.shape.Rectangle;
import javafx.stage.FileChooser;
import javafx.stage.Window;
import org.roiseg.client.ClassDescription;
import org.roiseg.client.Conventions;
import org.roiseg.client.ModelDescription;
import qupath.ext.roiseg.AreaSummary;
import qupath.ext.roiseg.EffortTable;
import qupath.ext.roiseg.FastTrackRunner;
import qupath.ext.roiseg.ModelChoice;
import qupath.ext.roiseg.PixelSizes;
import qupath.ext.roiseg.ResultMapper;
import qupath.ext.roiseg.ServerSettings;

/**
 * The extension's dialogs: server settings, model choice, models to compare, and the comparison.
 * Built in code (no FXML, so nothing depends on the class loader that loads FXML). Call on the
 * JavaFX thread.
 */
class RoisegController {

    private final ResourceBundle resources = RoisegCommand.resources;
    private final Window owner;

    RoisegController(Window owner) {
        this.owner = owner;
    }

    /**
     * Edits the server settings.
     *
     * @param current the settings to start from
     * @param tester  tests settings: called with the settings and a consumer of the result's text
     * @return the new settings, or empty when cancelled
     */
    Optional<ServerSettings> editServerSettings(ServerSettings current,
                                                BiConsumer<ServerSettings, Consumer<String>> tester) {
        TextField host = new TextField(current.host());
        host.setPromptText(resources.getString("settings.host.prompt"));
        host.setTooltip(new Tooltip(resources.getString("settings.host.tooltip")));
        TextField port = new TextField(Integer.toString(current.port()));
        port.setPrefColumnCount(6);
        CheckBox tls = new CheckBox(resources.getString("settings.tls"));
        tls.setSelected(current.tls());
        TextField certificate = new TextField(current.trustCertificate());
        certificate.setPromptText(resources.getString("settings.certificate.prompt"));
        certificate.disableProperty().bind(tls.selectedProperty().not());
        Button browse = new Button(resources.getString("settings.browse"));
        browse.disableProperty().bind(tls.selectedProperty().not());
        browse.setOnAction(e -> {
            FileChooser chooser = new FileChooser();
            chooser.setTitle(resources.getString("settings.certificate"));
            File file = chooser.showOpenDialog(browse.getScene().getWindow());
            if (file != null) {
                certificate.setText(file.getAbsolutePath());
            }
        });
        PasswordField token = new PasswordField();
        token.setText(current.bearerToken());
        token.setPromptText(resources.getString("settings.token.prompt"));
        TextField timeout = new TextField(Integer.toString(current.timeoutMinutes()));
        timeout.setPrefColumnCount(6);
        CheckBox readsSlide = new CheckBox(resources.getString("settings.readsSlide"));
        readsSlide.setSelected(current.serverReadsSlide());
        TextField localPrefix = new TextField(current.localPathPrefix());
        localPrefix.setPromptText(resources.getString("settings.localPrefix.prompt"));
        localPrefix.disableProperty().bind(readsSlide.selectedProperty().not());
        TextField serverPrefix = new TextField(current.serverPathPrefix());
        serverPrefix.setPromptText(resources.getString("settings.serverPrefix.prompt"));
        serverPrefix.disableProperty().bind(readsSlide.selectedProperty().not());
        Label status = new Label(resources.getString("settings.testHint"));
        status.setWrapText(true);
        // room for four lines from the start: the dialog never has to grow (resizing a showing
        // dialog misplaces it on QuPath 0.7's JavaFX)
        status.setMinHeight(4 * 1.4 * status.getFont().getSize());
        status.setAlignment(Pos.TOP_LEFT);

        GridPane grid = grid();
        ColumnConstraints labels = new ColumnConstraints();
        labels.setMinWidth(Region.USE_PREF_SIZE);
        ColumnConstraints fields = new ColumnConstraints();
        fields.setHgrow(Priority.ALWAYS);
        fields.setMinWidth(280);
        grid.getColumnConstraints().setAll(labels, fields);
        int row = 0;
        grid.addRow(row++, new Label(resources.getString("settings.host")), host);
        grid.addRow(row++, new Label(resources.getString("settings.port")), port);
        grid.add(tls, 1, row++);
        HBox certificateBox = new HBox(6, certificate, browse);
        HBox.setHgrow(certificate, Priority.ALWAYS);
        grid.addRow(row++, new Label(resources.getString("settings.certificate")), certificateBox);
        grid.addRow(row++, new Label(resources.getString("settings.token")), token);
        grid.addRow(row++, new Label(resources.getString("settings.timeout")), timeout);
        grid.add(readsSlide, 0, row++, 2, 1);
        grid.addRow(row++, new Label(resources.getString("settings.localPrefix")), localPrefix);
        grid.addRow(row++, new Label(resources.getString("settings.serverPrefix")), serverPrefix);
        Button test = new Button(resources.getString("settings.test"));
        test.setMinWidth(Region.USE_PREF_SIZE);
        grid.add(test, 0, row);
        // below the form, as wide as it, wrapping there: it never squeezes the labels
        status.prefWidthProperty().bind(grid.widthProperty());
        VBox content = new VBox(8, grid, status);

        // Reads the fields; reports the first problem in the status label and returns null
        java.util.function.Supplier<ServerSettings> read = () -> {
            try {
                int minutes;
                try {
                    minutes = Integer.parseInt(timeout.getText().strip());
                } catch (NumberFormatException ex) {
                    throw new IllegalArgumentException("The time limit must be a whole number of minutes.");
                }
                ServerSettings settings = new ServerSettings(host.getText(), ServerSettings.parsePort(port.getText()),
                        tls.isSelected(), certificate.getText(), token.getText(), minutes, readsSlide.isSelected(),
                        localPrefix.getText(), serverPrefix.getText());
                List<String> problems = settings.problems();
                if (!problems.isEmpty()) {
                    throw new IllegalArgumentException(String.join(" ", problems));
                }
                status.setText(String.join(" ", settings.warnings()));
                return settings;
            } catch (IllegalArgumentException ex) {
                status.setText(ex.getMessage());
                return null;
            }
        };
        test.setOnAction(e -> {
            ServerSettings settings = read.get();
            if (settings != null) {
                status.setText(resources.getString("settings.testing"));
                test.setDisable(true);
                tester.accept(settings, text -> {
                    status.setText(text);
                    test.setDisable(false);
                });
            }
        });

        Dialog<ButtonType> dialog = dialog(resources.getString("title.settings"), content);
        ServerSettings[] result = new ServerSettings[1];
        dialog.getDialogPane().lookupButton(ButtonType.OK).addEventFilter(ActionEvent.ACTION, e -> {
            result[0] = read.get();
            if (result[0] == null) {
                e.consume();
            }
        });
        return dialog.showAndWait().filter(b -> b == ButtonType.OK).map(b -> result[0]);
    }

    /**
     * Chooses the model for "Segment", and the segmentation options.
     *
     * @param models    the server's models
     * @param currentId the model chosen before; empty: the server's default
     * @return the chosen model, or empty when cancelled; the options are stored in {@link RoisegPrefs}
     */
    Optional<ModelDescription> chooseModel(List<ModelDescription> models, String currentId) {
        ListView<ModelDescription> list = modelList(models);
        ModelDescription current = models.stream().filter(m -> m.id().equals(currentId)).findFirst()
                .orElse(models.stream().filter(ModelDescription::isDefault).findFirst().orElse(null));
        VBox details = new VBox(6);
        details.setPrefWidth(380);
        details.setMaxWidth(380);
        list.getSelectionModel().selectedItemProperty().addListener((v, o, n) ->
                details.getChildren().setAll(modelDetails(n)));
        if (current != null) {
            list.getSelectionModel().select(current);
        } else if (!models.isEmpty()) {
            list.getSelectionModel().select(0);
        }
        CheckBox background = new CheckBox(resources.getString("models.includeBackground"));
        background.setSelected(RoisegPrefs.includeBackgroundProperty().get());
        CheckBox allClasses = new CheckBox(resources.getString("models.allClasses"));
        allClasses.setSelected(RoisegPrefs.allClassesProperty().get());
        CheckBox hysteresis = new CheckBox(resources.getString("models.hysteresis"));
        hysteresis.setSelected(RoisegPrefs.hysteresisProperty().get());
        CheckBox upsample = new CheckBox(resources.getString("models.allowUpsample"));
        upsample.setSelected(RoisegPrefs.allowUpsampleProperty().get());
        CheckBox unsure = new CheckBox(resources.getString("models.confidence"));
        unsure.setSelected(RoisegPrefs.confidenceOverlayProperty().get());
        Spinner<Double> review = new Spinner<>(0.0, 1.0, RoisegPrefs.reviewBelowProperty().get(), 0.05);
        review.setEditable(true);
        review.setPrefWidth(90);
        Label reviewLabel = new Label(resources.getString("models.reviewBelow"));
        reviewLabel.setWrapText(true);
        reviewLabel.setMaxWidth(560);
        HBox reviewRow = new HBox(8, reviewLabel, review);
        reviewRow.setAlignment(Pos.CENTER_LEFT);

        HBox top = new HBox(12, list, details);
        VBox root = new VBox(10, top, allClasses, background, hysteresis, upsample, unsure, reviewRow);
        Dialog<ButtonType> dialog = dialog(resources.getString("title.models"), root);
        dialog.getDialogPane().lookupButton(ButtonType.OK).disableProperty()
                .bind(list.getSelectionModel().selectedItemProperty().isNull());
        Optional<ButtonType> button = dialog.showAndWait();
        if (button.isEmpty() || button.get() != ButtonType.OK) {
            return Optional.empty();
        }
        RoisegPrefs.includeBackgroundProperty().set(background.isSelected());
        RoisegPrefs.allClassesProperty().set(allClasses.isSelected());
        RoisegPrefs.hysteresisProperty().set(hysteresis.isSelected());
        RoisegPrefs.allowUpsampleProperty().set(upsample.isSelected());
        RoisegPrefs.confidenceOverlayProperty().set(unsure.isSelected());
        RoisegPrefs.reviewBelowProperty().set(review.getValue() == null ? 0 : review.getValue());
        return Optional.ofNullable(list.getSelectionModel().getSelectedItem());
    }

    /**
     * Chooses at least two models to compare.
     *
     * @param models   the server's models
     * @param previous ids ticked last time
     * @return the ticked ids, or empty when cancelled
     */
    Optional<List<String>> chooseModelsToCompare(List<ModelDescription> models, List<String> previous) {
        VBox boxes = new VBox(6);
        List<CheckBox> checks = new ArrayList<>();
        for (ModelDescription model : models) {
            CheckBox check = new CheckBox(ModelChoice.label(model));
            check.setUserData(model.id());
            check.setSelected(previous.contains(model.id()) || (previous.isEmpty() && models.size() <= 3));
            checks.add(check);
            boxes.getChildren().add(check);
        }
        Label prompt = new Label(resources.getString("models.compare.prompt"));
        prompt.setWrapText(true);
        prompt.setMaxWidth(480);
        Label problem = new Label();
        VBox root = new VBox(10, prompt, boxes, problem);
        Dialog<ButtonType> dialog = dialog(resources.getString("title.compare"), root);
        dialog.getDialogPane().lookupButton(ButtonType.OK).addEventFilter(ActionEvent.ACTION, e -> {
            if (checks.stream().filter(CheckBox::isSelected).count() < 2) {
                problem.setText(resources.getString("error.compareNeedsTwo"));
                e.consume();
            }
        });
        return dialog.showAndWait().filter(b -> b == ButtonType.OK).map(b -> checks.stream()
                .filter(CheckBox::isSelected).map(c -> (String) c.getUserData()).toList());
    }

    /** Shows the class areas of compared models. */
    void showComparison(AreaSummary areas) {
        showTable(resources.getString("title.compare"), resources.getString("compare.table"), areas.rows());
    }

    /** Shows how much the pathologist corrected each submitted ROI (not modal). */
    void showEffort(List<FastTrackRunner.RoiEffort> efforts) {
        showTable(resources.getString("title.effort"), EffortTable.totals(efforts) + "\n"
                + resources.getString("effort.table"), EffortTable.rows(efforts));
    }

    /** A table of texts, its first row and column in bold, under a caption (not modal). */
    private void showTable(String title, String caption, List<List<String>> rows) {
        GridPane grid = grid();
        for (int r = 0; r < rows.size(); r++) {
            List<String> row = rows.get(r);
            for (int c = 0; c < row.size(); c++) {
                Label cell = new Label(row.get(c));
                if (r == 0 || c == 0) {
                    cell.setStyle("-fx-font-weight: bold");
                }
                grid.add(cell, c, r);
            }
        }
        Label text = new Label(caption);
        text.setWrapText(true);
        text.setMaxWidth(720);
        VBox root = new VBox(10, text, grid);
        Dialog<ButtonType> dialog = new Dialog<>();
        dialog.setTitle(title);
        if (owner != null) {
            dialog.initOwner(owner);
        }
        dialog.getDialogPane().setContent(root);
        dialog.getDialogPane().getButtonTypes().setAll(ButtonType.OK);
        dialog.setResizable(true);
        if (owner != null) {  // over the viewer's middle, not in a corner of the screen
            dialog.setOnShown(e -> {
                Window window = dialog.getDialogPane().getScene().getWindow();
                window.setX(owner.getX() + (owner.getWidth() - window.getWidth()) / 2);
                window.setY(owner.getY() + (owner.getHeight() - window.getHeight()) / 3);
            });
        }
        dialog.show();
    }

    private ListView<ModelDescription> modelList(List<ModelDescription> models) {
        ListView<ModelDescription> list = new ListView<>();
        list.getItems().setAll(models);
        list.setPrefSize(300, 300);
        list.setCellFactory(v -> new ListCell<>() {
            {
                // names wrap inside the list instead of running out of it
                setWrapText(true);
                prefWidthProperty().bind(list.widthProperty().subtract(24));
                setMaxWidth(Region.USE_PREF_SIZE);
            }

            @Override
            protected void updateItem(ModelDescription item, boolean empty) {
                super.updateItem(item, empty);
                setText(empty || item == null ? null : ModelChoice.label(item));
            }
        });
        return list;
    }

    /**
     * What a pathologist needs to choose: name, version, resolution, one sentence and the classes;
     * how it was made (architecture, training data, metrics) is under "More about this model".
     */
    private List<Node> modelDetails(ModelDescription model) {
        List<Node> nodes = new ArrayList<>();
        if (model == null) {
            return nodes;
        }
        Label title = wrapped(model.name() == null || model.name().isBlank() ? model.id() : model.name());
        title.setStyle("-fx-font-weight: bold");
        nodes.add(title);
        nodes.add(wrapped(String.format(Locale.ROOT, "Version %s \u00b7 %s \u00b5m/px%s", model.version(),
                PixelSizes.format(model.mpp()), model.isDefault() ? " \u00b7 server default" : "")));
        String summary = ModelChoice.firstSentence(model.description());
        if (!summary.isEmpty()) {
            nodes.add(wrapped(summary));
        }
        Label classes = new Label(resources.getString("models.classes"));
        classes.setStyle("-fx-font-weight: bold");
        nodes.add(classes);
        for (ClassDescription c : model.classes()) {
            // the colour the results will show: QuPath's own for a class it already has
            nodes.add(classRow(c.catchAll() ? c.name() + " " + resources.getString("models.catchAll") : c.name(),
                    ResultMapper.pathClass(c.name(), c.rgb()).getColor() & 0xFFFFFF));
        }
        Label more = wrapped(ModelChoice.details(model));
        ScrollPane scroll = new ScrollPane(more);
        scroll.setFitToWidth(true);
        scroll.setPrefViewportHeight(160);
        scroll.setMaxHeight(220);
        TitledPane pane = new TitledPane(resources.getString("models.more"), scroll);
        pane.setExpanded(false);
        pane.setAnimated(false);
        // the dialog grows and shrinks with the pane
        pane.expandedProperty().addListener((v, o, n) -> {
            if (pane.getScene() != null && pane.getScene().getWindow() != null) {
                pane.getScene().getWindow().sizeToScene();
            }
        });
        nodes.add(pane);
        return nodes;
    }

    private static Label wrapped(String text) {
        Label label = new Label(text);
        label.setWrapText(true);
        label.setMinHeight(Region.USE_PREF_SIZE);
        return label;
    }

    private static Node classRow(String name, int rgb) {
        Rectangle swatch = new Rectangle(14, 14, Color.rgb(Conventions.red(rgb), Conventions.green(rgb),
                Conventions.blue(rgb)));
        swatch.setStroke(Color.GRAY);
        Label label = wrapped(name);
        label.setMaxWidth(340);
        return new HBox(6, swatch, label);
    }

    /**
     * Asks which model to fine-tune on its stored examples, for how long, and whether the new
     * version becomes the default.
     *
     * @param models    the server's models and their versions
     * @param currentId the model chosen before; empty: the server's default
     * @return the fine-tuning's settings, or empty when cancelled
     */
    Optional<org.roiseg.client.FineTuneOptions> askFineTune(List<ModelDescription> models, String currentId) {
        javafx.scene.control.ComboBox<ModelDescription> model = new javafx.scene.control.ComboBox<>();
        model.getItems().setAll(models);
        javafx.util.StringConverter<ModelDescription> labels = new javafx.util.StringConverter<>() {
            @Override
            public String toString(ModelDescription m) {
                return m == null ? "" : ModelChoice.label(m);
            }

            @Override
            public ModelDescription fromString(String text) {
                return null;
            }
        };
        model.setConverter(labels);
        models.stream().filter(m -> m.id().equals(currentId)).findFirst()
                .or(() -> models.stream().filter(ModelDescription::isDefault).findFirst())
                .or(() -> models.stream().findFirst())
                .ifPresent(m -> model.getSelectionModel().select(m));
        javafx.scene.control.Spinner<Integer> epochs = new javafx.scene.control.Spinner<>(1, 100, 3);
        javafx.scene.control.Spinner<Integer> steps = new javafx.scene.control.Spinner<>(1, 10000, 10);
        epochs.setEditable(true);
        steps.setEditable(true);
        CheckBox makeDefault = new CheckBox(resources.getString("fineTune.makeDefault"));
        GridPane grid = grid();
        grid.addRow(0, new Label(resources.getString("fineTune.model")), model);
        grid.addRow(1, new Label(resources.getString("fineTune.epochs")), epochs);
        grid.addRow(2, new Label(resources.getString("fineTune.steps")), steps);
        grid.add(makeDefault, 0, 3, 2, 1);
        Label hint = new Label(resources.getString("fineTune.hint"));
        hint.setWrapText(true);
        hint.setMaxWidth(460);
        grid.add(hint, 0, 4, 2, 1);
        Dialog<ButtonType> dialog = dialog(resources.getString("title.fineTune"), grid);
        dialog.getDialogPane().lookupButton(ButtonType.OK).disableProperty()
                .bind(model.getSelectionModel().selectedItemProperty().isNull());
        Optional<ButtonType> button = dialog.showAndWait();
        if (button.isEmpty() || button.get() != ButtonType.OK || model.getValue() == null) {
            return Optional.empty();
        }
        return Optional.of(org.roiseg.client.FineTuneOptions.of(model.getValue().id())
                .withSteps(epochs.getValue(), steps.getValue()).withVersion("", makeDefault.isSelected()));
    }

    private Dialog<ButtonType> dialog(String title, Node content) {
        Dialog<ButtonType> dialog = new Dialog<>();
        dialog.setTitle(title);
        if (owner != null) {
            dialog.initOwner(owner);
        }
        dialog.getDialogPane().setContent(content);
        dialog.getDialogPane().getButtonTypes().setAll(ButtonType.OK, ButtonType.CANCEL);
        dialog.setResizable(true);
        return dialog;
    }

    private static GridPane grid() {
        GridPane grid = new GridPane();
        grid.setHgap(8);
        grid.setVgap(6);
        grid.setPadding(new Insets(4));
        return grid;
    }
}
