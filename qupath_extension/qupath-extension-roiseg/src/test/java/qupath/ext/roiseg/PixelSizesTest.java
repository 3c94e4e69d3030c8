package qupath.ext.roiseg;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

class PixelSizesTest {

    @Test
    void userValueThenCalibrationThenNothing() {
        assertEquals(0.3, PixelSizes.effective(0.3, true, 0.25).getAsDouble(), 0);
        assertEquals(0.25, PixelSizes.effective(0, true, 0.25).getAsDouble(), 0);
        assertEquals(0.25, PixelSizes.effective(Double.NaN, true, 0.25).getAsDouble(), 0);
        assertTrue(PixelSizes.effective(0, false, 1.0).isEmpty());
        assertTrue(PixelSizes.effective(0, true, Double.NaN).isEmpty());
    }

    @Test
    void validation() {
        assertTrue(PixelSizes.validate(0.25).isEmpty());
        assertTrue(PixelSizes.validate(PixelSizes.MIN_MICRONS).isEmpty());
        assertTrue(PixelSizes.validate(null).isPresent());
        assertTrue(PixelSizes.validate(Double.NaN).isPresent());
        assertTrue(PixelSizes.validate(0.0).orElseThrow().contains("not plausible"));
        assertTrue(PixelSizes.validate(-0.5).isPresent());
        assertTrue(PixelSizes.validate(250.0).isPresent());
        assertTrue(PixelSizes.validate(Double.POSITIVE_INFINITY).isPresent());
    }

    @Test
    void parsing() {
        assertEquals(0.25, PixelSizes.parse(" 0.25 "), 0);
        assertEquals(0.25, PixelSizes.parse("0,25"), 0);
        assertEquals(0.5, PixelSizes.parse("0.5 \u00b5m"), 0);
        assertEquals(0.5, PixelSizes.parse("0.5um/px"), 0);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> PixelSizes.parse("abc"));
        assertTrue(e.getMessage().contains("micrometres"));
        assertThrows(IllegalArgumentException.class, () -> PixelSizes.parse("0"));
        assertThrows(IllegalArgumentException.class, () -> PixelSizes.parse(null));
    }

    @Test
    void formatting() {
        assertEquals("0.25", PixelSizes.format(0.25));
        assertEquals("0.5", PixelSizes.format(0.5));
        assertEquals("2", PixelSizes.format(2));
        assertEquals("0.2527", PixelSizes.format(0.25271));
    }
}
