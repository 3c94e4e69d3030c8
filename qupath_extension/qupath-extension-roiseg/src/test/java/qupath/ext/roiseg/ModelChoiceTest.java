package qupath.ext.roiseg;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.roiseg.client.ModelDescription;

class ModelChoiceTest {

    final List<ModelDescription> models = List.of(ResolutionTest.model("a", 1.0, false),
            ResolutionTest.model("b", 0.5, true));

    @Test
    void noIdsMeansTheServerDefault() {
        assertEquals("b", ModelChoice.resolve(models, List.of()).get(0).id());
        assertEquals("a", ModelChoice.resolve(List.of(models.get(0)), null).get(0).id());
    }

    @Test
    void idsInOrderWithoutDuplicates() {
        assertEquals(List.of("b", "a"), ModelChoice.resolve(models, List.of("b", "a", "b")).stream()
                .map(ModelDescription::id).toList());
    }

    @Test
    void unknownModelsAndEmptyServersAreExplained() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> ModelChoice.resolve(models, List.of("zz")));
        assertTrue(e.getMessage().contains("\"zz\"") && e.getMessage().contains("a, b"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> ModelChoice.resolve(List.of(), List.of()));
    }

    @Test
    void storedIds() {
        assertEquals(List.of("a", "b c"), ModelChoice.parseIds(" a, b c ,,a"));
        assertEquals(List.of(), ModelChoice.parseIds(" "));
        assertEquals("a,b", ModelChoice.joinIds(List.of("a", "b", "a")));
    }

    @Test
    void labels() {
        assertEquals("b \u2013 0.5 \u00b5m/px, server default", ModelChoice.label(models.get(1)));
    }

    @Test
    void comparingNeedsTwoModels() {
        assertTrue(ModelChoice.compareProblem(models).isEmpty());
        String one = ModelChoice.compareProblem(models.subList(1, 2)).orElseThrow();
        assertTrue(one.contains("at least two") && one.contains("one model") && one.contains("--models"), one);
        assertTrue(ModelChoice.compareProblem(List.of()).orElseThrow().contains("no models"));
    }

    @Test
    void oneSentenceUpFrontTheRestOnDemand() {
        assertEquals("Glands in H&E colon.", ModelChoice.firstSentence(" Glands in H&E colon. Trained on GlaS. "));
        assertEquals("No full stop", ModelChoice.firstSentence("No full stop"));
        assertEquals("Glands vs. the rest.", ModelChoice.firstSentence("Glands vs. the rest. More."));
        assertEquals("", ModelChoice.firstSentence(null));
        ModelDescription model = new ModelDescription("m", "M", "Glands in H&E colon. Trained on 85 images.", "1.0",
                "", "Unet", "mobilenet_v2", 1.0, 512, 128, List.of(), "GlaS, command: train --out /tmp/x", null,
                java.util.Map.of("val_dice", "0.92"), true);
        String details = ModelChoice.details(model);
        assertTrue(details.startsWith("Trained on 85 images."), details);
        assertTrue(details.contains("Unet / mobilenet_v2") && details.contains("/tmp/x")
                && details.contains("val_dice: 0.92"), details);
        assertFalse(details.contains("Glands in H&E colon."), details);
    }

    static ModelDescription version(String id, String version, boolean isDefaultVersion) {
        return new ModelDescription(id + "@" + version, "Glands", "", version, "", "Unet", "mobilenet_v2", 1.0, 512,
                64, List.of(), "", "", Map.of(), false, List.of(), isDefaultVersion ? "" : id + "@1.0 (abc)",
                isDefaultVersion);
    }

    @Test
    void fineTunedVersionsCanBeChosenAndResolvedByTheirVersionedId() {
        ModelDescription glas = new ModelDescription("glas", "Glands", "", "1.0", "", "Unet", "mobilenet_v2", 1.0,
                512, 64, List.of(), "", "", Map.of(), true,
                List.of(version("glas", "1.0", true), version("glas", "1.0-ft1", false)), "", true);
        ModelDescription other = ResolutionTest.model("other", 0.5, false);
        List<ModelDescription> all = ModelChoice.withVersions(List.of(glas, other));
        assertEquals(List.of("glas", "glas@1.0-ft1", "other"), all.stream().map(ModelDescription::id).toList());
        assertEquals("glas@1.0-ft1", ModelChoice.resolve(List.of(glas, other), List.of("glas@1.0-ft1")).get(0).id());
        assertEquals("glas", ModelChoice.resolve(List.of(glas, other), List.of()).get(0).id());
        assertTrue(ModelChoice.label(all.get(1)).contains("version 1.0-ft1"), ModelChoice.label(all.get(1)));
        assertTrue(ModelChoice.details(all.get(1)).contains("Fine-tuned from: glas@1.0 (abc)"));
        assertEquals("glas", all.get(1).baseId());
    }
}
