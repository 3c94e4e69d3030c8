package org.roiseg.client;

import java.util.List;
import java.util.Locale;
import java.util.Optional;

/**
 * How much the pathologist changed roiseg's pre-annotations inside one submitted ROI, as the server
 * measured it ({@code roiseg effort}'s measures): objects matched by Feature id (else by geometry), areas
 * from the polygons.
 *
 * @param measured       whether there was a prediction to compare with
 * @param notMeasuredWhy why not, when not measured
 * @param runIds         the roiseg runs whose predictions were compared
 * @param matchedBy      "id" or "geometry"
 * @param classes        per class, then {@link #ALL}: every class pooled
 */
public record CorrectionEffort(boolean measured, String notMeasuredWhy, List<String> runIds, String matchedBy,
                               List<ClassCorrection> classes) {

    /** The name of the row that pools every class. */
    public static final String ALL = "(all)";

    /**
     * One class's correction.
     *
     * @param name             the class ({@link #ALL}: all classes)
     * @param dice             pixel Dice of prediction and correction; NaN when the class is on neither side
     * @param iou              pixel IoU; NaN likewise
     * @param predictedUm2     predicted area, µm²
     * @param correctedUm2     corrected area, µm²
     * @param addedUm2         area the correction added, µm²
     * @param removedUm2       area the correction removed, µm²
     * @param predictedObjects objects roiseg predicted
     * @param kept             of those, kept unchanged
     * @param edited           of those, outline moved or class changed
     * @param reclassified     of the edited ones, class changed
     * @param deleted          of those, deleted
     * @param added            objects the pathologist added
     */
    public record ClassCorrection(String name, double dice, double iou, double predictedUm2, double correctedUm2,
                                  double addedUm2, double removedUm2, int predictedObjects, int kept, int edited,
                                  int reclassified, int deleted, int added) {

        static ClassCorrection fromProto(org.roiseg.proto.v1.ClassCorrection c) {
            return new ClassCorrection(c.getName(), c.hasDice() ? c.getDice() : Double.NaN,
                    c.hasIou() ? c.getIou() : Double.NaN, c.getPredictedUm2(), c.getCorrectedUm2(), c.getAddedUm2(),
                    c.getRemovedUm2(), c.getPredictedObjects(), c.getKept(), c.getEdited(), c.getReclassified(),
                    c.getDeleted(), c.getAdded());
        }

        /** One line: Dice, areas added and removed, what became of the objects. */
        public String describe() {
            return String.format(Locale.ROOT, "Dice %s; %,.0f \u00b5m\u00b2 added, %,.0f \u00b5m\u00b2 removed; %d "
                    + "predicted object(s): %d kept, %d edited, %d deleted; %d added",
                    Double.isNaN(dice) ? "n/a" : String.format(Locale.ROOT, "%.3f", dice), addedUm2, removedUm2,
                    predictedObjects, kept, edited, deleted, added);
        }
    }

    /** Keeps unmodifiable lists. */
    public CorrectionEffort {
        runIds = List.copyOf(runIds);
        classes = List.copyOf(classes);
    }

    static CorrectionEffort fromProto(org.roiseg.proto.v1.CorrectionEffort e) {
        return new CorrectionEffort(e.getMeasured(), e.getNotMeasuredWhy(), e.getRunIdsList(), e.getMatchedBy(),
                e.getClassesList().stream().map(ClassCorrection::fromProto).toList());
    }

    /** The row of every class pooled; empty when not measured. */
    public Optional<ClassCorrection> total() {
        return classes.stream().filter(c -> ALL.equals(c.name())).findFirst();
    }
}
