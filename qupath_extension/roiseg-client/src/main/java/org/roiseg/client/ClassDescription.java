package org.roiseg.client;

import org.roiseg.proto.v1.ClassInfo;

/**
 * One output class of a model.
 *
 * @param index index of the class's channel in the model output
 * @param name  the QuPath class name
 * @param rgb   the class colour as 0xRRGGBB (see {@link Conventions#packRgb})
 */
public record ClassDescription(int index, String name, int rgb) {

    static ClassDescription fromProto(ClassInfo info) {
        return new ClassDescription(info.getIndex(), info.getName(),
                Conventions.packRgb(info.getColor().getR(), info.getColor().getG(), info.getColor().getB()));
    }
}
