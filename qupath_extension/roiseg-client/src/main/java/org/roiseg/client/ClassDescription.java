package org.roiseg.client;

import org.roiseg.proto.v1.ClassInfo;

/**
 * One output class of a model.
 *
 * @param index    index of the class's channel in the model output
 * @param name     the QuPath class name
 * @param rgb      the class colour as 0xRRGGBB (see {@link Conventions#packRgb})
 * @param catchAll whether the class is the model's "everything else" (the rest of the tissue, e.g. the default
 *                 model's "Other tissue"): left out of results unless asked for
 *                 ({@link SegmentOptions.Builder#allClasses}), and what a correction leaves unannotated in its ROI
 */
public record ClassDescription(int index, String name, int rgb, boolean catchAll) {

    /** A class that is not a catch-all. */
    public ClassDescription(int index, String name, int rgb) {
        this(index, name, rgb, false);
    }

    static ClassDescription fromProto(ClassInfo info) {
        return new ClassDescription(info.getIndex(), info.getName(),
                Conventions.packRgb(info.getColor().getR(), info.getColor().getG(), info.getColor().getB()),
                info.getCatchAll());
    }
}
