package org.roiseg.client;

import java.util.Locale;
import org.roiseg.proto.v1.FineTuneStage;

/**
 * One progress event of a fine-tuning.
 *
 * @param stage       PREPARING, TRAINING (after each step), VALIDATED (after each epoch), EXPORTING,
 *                    REGISTERING (or a newer stage's name)
 * @param epoch       epochs done
 * @param epochs      epochs in all
 * @param step        steps done
 * @param totalSteps  steps in all
 * @param loss        of the last step (TRAINING) or the epoch's mean (VALIDATED)
 * @param valDice     mean validation Dice; NaN when not measured
 * @param bestValDice best validation Dice so far; NaN when not measured
 * @param message     a short description for people; may be empty
 */
public record FineTuneProgress(String stage, int epoch, int epochs, int step, int totalSteps, double loss,
                               double valDice, double bestValDice, String message) {

    static FineTuneProgress fromProto(org.roiseg.proto.v1.FineTuneProgress p) {
        FineTuneStage stage = p.getStage();
        String name = stage == FineTuneStage.UNRECOGNIZED ? "UNSPECIFIED"
                : stage.name().replace("FINE_TUNE_STAGE_", "");
        return new FineTuneProgress(name, p.getEpoch(), p.getEpochs(), p.getStep(), p.getTotalSteps(), p.getLoss(),
                p.hasValDice() ? p.getValDice() : Double.NaN, p.hasBestValDice() ? p.getBestValDice() : Double.NaN,
                p.getMessage());
    }

    /** Share of the steps done, 0..1, or -1 when unknown. */
    public double fraction() {
        return totalSteps > 0 ? Math.min(1.0, (double) step / totalSteps) : -1;
    }

    /** A line for people, e.g. "Training: step 3 of 30, loss 0.412". */
    public String describe() {
        String s = stage.isEmpty() ? "" : stage.charAt(0) + stage.substring(1).toLowerCase(Locale.ROOT);
        StringBuilder text = new StringBuilder(s);
        if ("TRAINING".equals(stage) && totalSteps > 0) {
            text.append(String.format(Locale.ROOT, ": step %d of %d, loss %.3f", step, totalSteps, loss));
        } else if ("VALIDATED".equals(stage)) {
            text.append(String.format(Locale.ROOT, ": epoch %d of %d", epoch, epochs));
            if (!Double.isNaN(valDice)) {
                text.append(String.format(Locale.ROOT, ", validation Dice %.3f", valDice));
            }
        }
        if (message != null && !message.isBlank() && !"TRAINING".equals(stage)) {
            text.append(text.length() > 0 ? " \u2013 " : "").append(message.strip());
        }
        return text.toString();
    }
}
