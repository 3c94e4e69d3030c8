package qupath.ext.roiseg;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
import java.util.Optional;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Collectors;
import org.roiseg.client.ModelDescription;

/** Which of the server's models a run uses. Plain Java, no QuPath classes. */
public final class ModelChoice {

    private static final Pattern SENTENCE_END = Pattern.compile("[.!?](\\s+\\p{Lu}|\\s*$)");

    private ModelChoice() {
    }

    /**
     * The models to run.
     *
     * @param available the server's models
     * @param wanted    the chosen ids; empty for the server's default model
     * @throws IllegalArgumentException with a message for the user when the server has no models or
     *                                  lacks a chosen one
     */
    public static List<ModelDescription> resolve(List<ModelDescription> available, Collection<String> wanted) {
        if (available.isEmpty()) {
            throw new IllegalArgumentException("The roiseg server has no models. Start it with --models DIR, "
                    + "or with its embedded default model.");
        }
        if (wanted == null || wanted.isEmpty()) {
            return List.of(available.stream().filter(ModelDescription::isDefault).findFirst()
                    .orElse(available.get(0)));
        }
        List<ModelDescription> all = withVersions(available);
        List<ModelDescription> chosen = new ArrayList<>();
        for (String id : new LinkedHashSet<>(wanted)) {
            ModelDescription model = all.stream().filter(m -> m.id().equals(id)).findFirst().orElse(null);
            if (model == null) {
                throw new IllegalArgumentException("The roiseg server has no model \"" + id + "\" (it has: "
                        + all.stream().map(ModelDescription::id).collect(Collectors.joining(", "))
                        + "). Choose one in Extensions > roiseg > Choose model.");
            }
            chosen.add(model);
        }
        return chosen;
    }

    /**
     * The server's models followed each by its other servable versions (id {@code id@version}, e.g.
     * fine-tuned ones), so that a version can be chosen like a model. The default version is not
     * repeated: the model's plain id selects it.
     */
    public static List<ModelDescription> withVersions(List<ModelDescription> models) {
        List<ModelDescription> all = new ArrayList<>();
        for (ModelDescription model : models) {
            all.add(model);
            for (ModelDescription version : model.versions()) {
                boolean isTheDefault = version.isDefaultVersion() || version.id().equals(model.id())
                        || version.id().equals(model.id() + "@" + model.version());
                if (!isTheDefault) {
                    all.add(version);
                }
            }
        }
        return all;
    }

    /**
     * Why the server's models cannot be compared, if they cannot: comparing needs at least two.
     *
     * @param available the server's models
     * @return a message for the user, or empty when there are two or more models
     */
    public static Optional<String> compareProblem(List<ModelDescription> available) {
        if (available.size() >= 2) {
            return Optional.empty();
        }
        String has = available.isEmpty() ? "no models" : "one model, " + label(available.get(0));
        return Optional.of("Comparing needs at least two models, and the roiseg server has " + has
                + ". Start the server with --models pointing at the folders of the models to compare.");
    }

    /** Model ids from a comma-separated text (as stored in the preferences), without duplicates. */
    public static List<String> parseIds(String text) {
        if (text == null || text.isBlank()) {
            return List.of();
        }
        Set<String> ids = new LinkedHashSet<>();
        Arrays.stream(text.split(",")).map(String::strip).filter(s -> !s.isEmpty()).forEach(ids::add);
        return List.copyOf(ids);
    }

    /** Model ids as stored in the preferences. */
    public static String joinIds(Collection<String> ids) {
        return String.join(",", new LinkedHashSet<>(ids));
    }

    /**
     * The first sentence of a text (up to the first ".", "!" or "?" followed by a capital letter or the
     * end, so "vs. the" does not end it), stripped; empty for none.
     */
    public static String firstSentence(String text) {
        if (text == null) {
            return "";
        }
        String stripped = text.strip();
        Matcher end = SENTENCE_END.matcher(stripped);
        return end.find() ? stripped.substring(0, end.start() + 1) : stripped;
    }

    /**
     * How a model was made, for "More about this model": the rest of its description, id,
     * architecture, tile size, training data and metrics.
     */
    public static String details(ModelDescription model) {
        StringBuilder text = new StringBuilder();
        String description = model.description() == null ? "" : model.description().strip();
        String rest = description.substring(firstSentence(description).length()).strip();
        if (!rest.isEmpty()) {
            text.append(rest).append("\n\n");
        }
        text.append(String.format(Locale.ROOT, "Id: %s%n%s / %s, tiles of %d px%n", model.id(),
                model.architecture(), model.encoder(), model.tileSize()));
        if (!model.fineTunedFrom().isBlank()) {
            text.append("Fine-tuned from: ").append(model.fineTunedFrom()).append('\n');
        }
        if (model.trainedOn() != null && !model.trainedOn().isBlank()) {
            text.append("Trained on: ").append(model.trainedOn().strip()).append('\n');
        }
        model.metrics().forEach((name, value) -> text.append(name).append(": ").append(value).append('\n'));
        if (model.tumorClass() != null && !model.tumorClass().isBlank()) {
            text.append("Hysteresis applies to: ").append(model.tumorClass()).append('\n');
        }
        return text.toString().strip();
    }

    /** A short description of a model for lists: name, id, resolution and "default". */
    public static String label(ModelDescription model) {
        String name = model.name() == null || model.name().isBlank() ? model.id() : model.name();
        String version = model.id().contains("@") ? ", version " + model.version() : "";
        return name + (name.equals(model.id()) ? "" : " (" + model.id() + ")") + version + " \u2013 "
                + PixelSizes.format(model.mpp()) + " \u00b5m/px" + (model.isDefault() ? ", server default" : "");
    }
}
