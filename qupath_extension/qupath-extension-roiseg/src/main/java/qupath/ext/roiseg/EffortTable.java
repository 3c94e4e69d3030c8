package qupath.ext.roiseg;

import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import org.roiseg.client.CorrectionEffort;
import org.roiseg.client.CorrectionEffort.ClassCorrection;

/**
 * The correction effort of submitted ROIs as a table for the user (shown after Submit corrections): per ROI
 * and class, pixel Dice of roiseg's pre-annotations and the corrected annotations, area added and removed, and
 * what became of the predicted objects. Plain Java, unit-tested without QuPath.
 */
public final class EffortTable {

    /** The header row. */
    public static final List<String> HEADER = List.of("Annotation", "Class", "Dice", "Added \u00b5m\u00b2",
            "Removed \u00b5m\u00b2", "Predicted", "Kept", "Edited", "Deleted", "Added objects");

    private EffortTable() {
    }

    /** The header, then a row per ROI and class (all classes together last), or one saying why not measured. */
    public static List<List<String>> rows(List<FastTrackRunner.RoiEffort> efforts) {
        List<List<String>> rows = new ArrayList<>();
        rows.add(HEADER);
        for (FastTrackRunner.RoiEffort roi : efforts) {
            CorrectionEffort effort = roi.effort();
            if (!effort.measured()) {
                List<String> row = new ArrayList<>(List.of(roi.roi(), "not measured: " + effort.notMeasuredWhy()));
                while (row.size() < HEADER.size()) {
                    row.add("");
                }
                rows.add(row);
                continue;
            }
            for (ClassCorrection c : effort.classes()) {
                rows.add(List.of(roi.roi(), CorrectionEffort.ALL.equals(c.name()) ? "All classes" : c.name(),
                        Double.isNaN(c.dice()) ? "n/a" : String.format(Locale.ROOT, "%.3f", c.dice()),
                        String.format(Locale.ROOT, "%,.0f", c.addedUm2()),
                        String.format(Locale.ROOT, "%,.0f", c.removedUm2()), Integer.toString(c.predictedObjects()),
                        Integer.toString(c.kept()), Integer.toString(c.edited()), Integer.toString(c.deleted()),
                        Integer.toString(c.added())));
            }
        }
        return rows;
    }

    /** One line over all ROIs: objects kept, edited, deleted and added; area added and removed. */
    public static String totals(List<FastTrackRunner.RoiEffort> efforts) {
        int measured = 0;
        int predicted = 0;
        int kept = 0;
        int edited = 0;
        int deleted = 0;
        int added = 0;
        double addedArea = 0;
        double removedArea = 0;
        for (FastTrackRunner.RoiEffort roi : efforts) {
            var total = roi.effort().total();
            if (roi.effort().measured() && total.isPresent()) {
                ClassCorrection t = total.get();
                measured++;
                predicted += t.predictedObjects();
                kept += t.kept();
                edited += t.edited();
                deleted += t.deleted();
                added += t.added();
                addedArea += t.addedUm2();
                removedArea += t.removedUm2();
            }
        }
        if (measured == 0) {
            return "Correction effort not measured (no roiseg pre-annotations to compare with).";
        }
        return String.format(Locale.ROOT, "Correction effort over %d annotation(s): of %d predicted object(s) %d kept, "
                + "%d edited, %d deleted; %d added; %,.0f \u00b5m\u00b2 added, %,.0f \u00b5m\u00b2 removed.", measured,
                predicted, kept, edited, deleted, added, addedArea, removedArea);
    }
}
