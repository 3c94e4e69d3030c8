package qupath.ext.roiseg;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.List;
import org.junit.jupiter.api.Test;
import org.roiseg.client.CorrectionEffort;
import org.roiseg.client.CorrectionEffort.ClassCorrection;

class EffortTableTest {

    static final ClassCorrection GLAND = new ClassCorrection("Gland epithelium", 0.9123, 0.84, 1000, 900, 50.4,
            150.6, 5, 2, 1, 0, 2, 1);
    static final ClassCorrection ALL = new ClassCorrection(CorrectionEffort.ALL, Double.NaN, Double.NaN, 1000, 900,
            50.4, 150.6, 5, 2, 1, 0, 2, 1);

    @Test
    void aRowPerRoiAndClassAllClassesLast() {
        var measured = new FastTrackRunner.RoiEffort("my ROI", new CorrectionEffort(true, "", List.of("r"), "id",
                List.of(GLAND, ALL)));
        var notMeasured = new FastTrackRunner.RoiEffort("Annotation 2", new CorrectionEffort(false,
                "no roiseg pre-annotation is left", List.of(), "", List.of()));
        List<List<String>> rows = EffortTable.rows(List.of(measured, notMeasured));
        assertEquals(EffortTable.HEADER, rows.get(0));
        assertEquals(List.of("my ROI", "Gland epithelium", "0.912", "50", "151", "5", "2", "1", "2", "1"),
                rows.get(1));
        assertEquals(List.of("my ROI", "All classes", "n/a", "50", "151", "5", "2", "1", "2", "1"), rows.get(2));
        assertEquals("not measured: no roiseg pre-annotation is left", rows.get(3).get(1));
        assertEquals(EffortTable.HEADER.size(), rows.get(3).size());
        assertEquals("Correction effort over 1 annotation(s): of 5 predicted object(s) 2 kept, 1 edited, 2 deleted; "
                + "1 added; 50 \u00b5m\u00b2 added, 151 \u00b5m\u00b2 removed.",
                EffortTable.totals(List.of(measured, notMeasured)));
        assertEquals("Correction effort not measured (no roiseg pre-annotations to compare with).",
                EffortTable.totals(List.of(notMeasured)));
    }
}
