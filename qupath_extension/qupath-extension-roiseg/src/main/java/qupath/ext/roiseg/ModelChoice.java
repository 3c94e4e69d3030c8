package qupath.ext.roiseg;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import java.util.stream.Collectors;
import org.roiseg.client.ModelDescription;

/** Which of the server's models a run uses. Plain Java, no QuPath classes. */
public final class ModelChoice {

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
        List<ModelDescription> chosen = new ArrayList<>();
        for (String id : new LinkedHashSet<>(wanted)) {
            ModelDescription model = available.stream().filter(m -> m.id().equals(id)).findFirst().orElse(null);
            if (model == null) {
                throw new IllegalArgumentException("The roiseg server has no model \"" + id + "\" (it has: "
                        + available.stream().map(ModelDescription::id).collect(Collectors.joining(", "))
                        + "). Choose one in Extensions > roiseg > Choose model.");
            }
            chosen.add(model);
        }
        return chosen;
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

    /** A short description of a model for lists: name, id, resolution and "default". */
    public static String label(ModelDescription model) {
        String name = model.name() == null || model.name().isBlank() ? model.id() : model.name();
        return name + (name.equals(model.id()) ? "" : " (" + model.id() + ")") + " \u2013 "
                + PixelSizes.format(model.mpp()) + " \u00b5m/px" + (model.isDefault() ? ", server default" : "");
    }
}
