package qupath.ext.roiseg;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import org.junit.jupiter.api.Test;
import org.roiseg.client.ClassArea;

class AreaSummaryTest {

    @Test
    void totalsOverAnnotationsPerModel() {
        AreaSummary s = new AreaSummary();
        assertTrue(s.isEmpty());
        s.add("a", List.of(new ClassArea("Tumor", 3e6, 2), new ClassArea("Stroma", 1e6, 1)));
        s.add("b", List.of(new ClassArea("Stroma", 2e6, 4)));
        s.add("a", List.of(new ClassArea("Tumor", 1e6, 1)));
        assertEquals(List.of("a", "b"), s.modelIds());
        assertEquals(List.of("Tumor", "Stroma"), s.classNames());
        assertEquals(4e6, s.total("a", "Tumor").areaMicrons2(), 0);
        assertEquals(3, s.total("a", "Tumor").features());
        assertNull(s.total("b", "Tumor"));
        List<List<String>> rows = s.rows();
        assertEquals(List.of("Class", "a", "b"), rows.get(0));
        assertEquals(List.of("Tumor", "4.000 mm\u00b2 (80.0 %)", "\u2013"), rows.get(1));
        assertEquals(List.of("Stroma", "1.000 mm\u00b2 (20.0 %)", "2.000 mm\u00b2 (100.0 %)"), rows.get(2));
        assertTrue(s.toText().startsWith("Class\ta\tb\n"));
    }
}
