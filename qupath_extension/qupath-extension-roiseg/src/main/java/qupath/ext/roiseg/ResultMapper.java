package qupath.ext.roiseg;

import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.PathObjects;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;
import qupath.lib.regions.ImagePlane;
import qupath.lib.roi.GeometryTools;
import qupath.lib.roi.interfaces.ROI;

/**
 * Turns roiseg results into QuPath annotations and places them under their ROI: the objects are
 * unlocked child annotations of the ROI's annotation, classified, with the model's measurements and
 * metadata. A re-run replaces only earlier roiseg pre-annotations under that ROI, in one hierarchy
 * event, so that one undo takes the whole change back.
 *
 * <p>Uses only APIs present in QuPath 0.5, 0.6 and 0.7 ({@code addChildObjects},
 * {@code removeChildObjects}, {@code MeasurementList.put}, {@code PathObject.getMetadata}).
 */
public final class ResultMapper {

    /** What one placement changed. */
    public record Placement(int added, int removed, Set<PathClass> classes) {
    }

    private ResultMapper() {
    }

    /**
     * Creates the annotations for the specs on the ROI's plane (z and t). Safe off the JavaFX
     * thread: nothing is added to a hierarchy here.
     */
    public static List<PathObject> createObjects(List<ObjectSpec> specs, ImagePlane plane) {
        List<PathObject> objects = new ArrayList<>(specs.size());
        for (ObjectSpec spec : specs) {
            ROI roi = GeometryTools.geometryToROI(spec.geometry(), plane);
            if (roi == null || roi.isEmpty()) {
                continue;
            }
            PathClass pathClass = spec.className() == null ? null : pathClass(spec.className(), spec.rgb());
            PathObject annotation = PathObjects.createAnnotationObject(roi, pathClass);
            annotation.setLocked(false);
            if (spec.name() != null) {
                annotation.setName(spec.name());
            }
            var measurements = annotation.getMeasurementList();
            for (Map.Entry<String, Double> m : spec.measurements().entrySet()) {
                measurements.put(m.getKey(), m.getValue());
            }
            Map<String, String> metadata = annotation.getMetadata();
            for (Map.Entry<String, String> m : spec.metadata().entrySet()) {
                metadata.put(m.getKey(), m.getValue());
            }
            objects.add(annotation);
        }
        return objects;
    }

    /**
     * The QuPath class of a name, with roiseg's colour. {@code PathClass.fromString} returns the
     * one instance per name and applies the colour only when it creates it, so the colour is set
     * again when it differs.
     */
    public static PathClass pathClass(String name, int rgb) {
        PathClass pathClass = PathClass.fromString(name, ObjectSpec.argb(rgb));
        if (ObjectSpec.colorDiffers(pathClass.getColor(), rgb)) {
            pathClass.setColor((rgb >> 16) & 0xFF, (rgb >> 8) & 0xFF, rgb & 0xFF);
        }
        return pathClass;
    }

    /**
     * Replaces the earlier roiseg pre-annotations under {@code parent} by {@code objects}, and fires
     * one hierarchy event. The user's own objects under the ROI stay; user objects nested inside a
     * replaced pre-annotation move up to the ROI. Call it on the thread that owns the hierarchy's
     * listeners (the JavaFX thread in the GUI).
     *
     * @param hierarchy the image's hierarchy
     * @param parent    the ROI's annotation
     * @param objects   the new annotations
     * @param source    the event's source
     */
    public static Placement replaceChildren(PathObjectHierarchy hierarchy, PathObject parent,
                                            Collection<PathObject> objects, Object source) {
        List<PathObject> children = new ArrayList<>(parent.getChildObjects());
        Replacement.Plan<PathObject> plan = Replacement.plan(children, ResultMapper::children, PathObject::getMetadata);
        if (!plan.reattach().isEmpty()) {
            // addChildObjects takes each object away from its current parent first
            parent.addChildObjects(plan.reattach());
        }
        if (!plan.remove().isEmpty()) {
            parent.removeChildObjects(new ArrayList<>(plan.remove()));
        }
        if (!objects.isEmpty()) {
            parent.addChildObjects(objects);
        }
        if (!plan.isEmpty() || !objects.isEmpty()) {
            hierarchy.fireHierarchyChangedEvent(source, parent);
        }
        Set<PathClass> classes = new LinkedHashSet<>();
        for (PathObject object : objects) {
            if (object.getPathClass() != null) {
                classes.add(object.getPathClass());
            }
        }
        return new Placement(objects.size(), plan.remove().size(), classes);
    }

    private static Collection<PathObject> children(PathObject object) {
        return object.hasChildObjects() ? new ArrayList<>(object.getChildObjects()) : List.of();
    }
}
