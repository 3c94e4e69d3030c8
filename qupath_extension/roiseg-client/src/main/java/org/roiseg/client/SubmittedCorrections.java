package org.roiseg.client;

/**
 * What {@link RoisegClient#submitCorrectionsRegion} and {@link RoisegClient#submitCorrectionsSlide} did.
 *
 * @param example  the stored example
 * @param replaced whether an example of the same image and ROI was replaced
 */
public record SubmittedCorrections(TrainingExample example, boolean replaced) {
}
