package qupath.ext.roiseg;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.roiseg.client.ModelDescription;

class ResolutionTest {

    static ModelDescription model(String id, double mpp, boolean isDefault) {
        return new ModelDescription(id, id, "", "1", "", "Unet", "mobilenet_v2", mpp, 512, 64, List.of(), "", "",
                Map.of(), isDefault);
    }

    @Test
    void downsampleIsModelOverImagePixelSize() {
        assertEquals(4.0, Resolution.chooseDownsample(1.0, 0.25), 1e-12);
        assertEquals(2.0, Resolution.chooseDownsample(0.5, 0.25), 1e-12);
        assertEquals(1.6, Resolution.chooseDownsample(0.8, 0.5), 1e-12);
    }

    @Test
    void nearlyWholeDownsamplesSnap() {
        // 0.5 / 0.2527 = 1.9786: not snapped; 0.5 / 0.2501 = 1.9992: snapped to 2
        assertEquals(0.5 / 0.2527, Resolution.chooseDownsample(0.5, 0.2527), 1e-12);
        assertEquals(2.0, Resolution.chooseDownsample(0.5, 0.2501), 0);
        assertEquals(1.0, Resolution.chooseDownsample(0.5, 0.4999), 0);
    }

    @Test
    void neverBelowOneAndOneWhenUnknown() {
        assertEquals(1.0, Resolution.chooseDownsample(0.5, 1.0), 0);
        assertEquals(1.0, Resolution.chooseDownsample(Double.NaN, 0.25), 0);
        assertEquals(1.0, Resolution.chooseDownsample(0.5, 0), 0);
        assertEquals(1.0, Resolution.chooseDownsample(0.5, Double.POSITIVE_INFINITY), 0);
    }

    @Test
    void upsamplingOnlyForCoarserImages() {
        assertTrue(Resolution.needsUpsampling(0.5, 1.0));
        assertFalse(Resolution.needsUpsampling(0.5, 0.5));
        assertFalse(Resolution.needsUpsampling(0.5, 0.5004));
        assertFalse(Resolution.needsUpsampling(0.5, 0.25));
        assertFalse(Resolution.needsUpsampling(0.5, Double.NaN));
    }

    @Test
    void finestModelWins() {
        assertEquals(0.25, Resolution.finestMicronsPerPixel(List.of(model("a", 1.0, false), model("b", 0.25, true),
                model("c", 0, false))), 0);
        assertTrue(Double.isNaN(Resolution.finestMicronsPerPixel(List.of(model("c", 0, false)))));
    }

    @Test
    void regionChecks() {
        // 4000 x 4000 px at 0.25 µm/px for a 1 µm/px model: 1000 x 1000 = 1 MP at model resolution
        assertTrue(Resolution.checkRegion(4000, 4000, 4, 0.25, 1.0, 2_000_000, 1L << 30).isEmpty());
        String tooBig = Resolution.checkRegion(4000, 4000, 4, 0.25, 1.0, 500_000, 1L << 30).orElseThrow();
        assertTrue(tooBig.contains("1000 x 1000 pixels") && tooBig.contains("(1.0 megapixels)")
                && tooBig.contains("limit of 0.5 megapixels"), tooBig);
        String memory = Resolution.checkRegion(100_000, 100_000, 1, 0.25, 0.25, 0, 1L << 30).orElseThrow();
        assertTrue(memory.contains("MB"), memory);
        assertTrue(Resolution.checkRegion(0, 10, 1, 0.25, 0.5, 0, 1L << 30).orElseThrow().contains("outside"));
    }
}
