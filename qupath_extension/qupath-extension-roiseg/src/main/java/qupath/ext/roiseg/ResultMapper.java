package qupath.ext.roiseg;

import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import java.util.UUID;
import org.locationtech.jts.geom.Geometry;
import org.locationtech.jts.geom.PrecisionModel;
import org.locationtech.jts.precision.GeometryPrecisionReducer;
import qupath.lib.common.GeneralTools;
import qupath.lib.common.Version;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.PathObjects;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;
import qupath.lib.regions.ImagePlane;
import qupath.lib.roi.GeometryTools;
import qupath.lib.roi.interfaces.ROI;

/**
 * Turns roiseg results into QuPath annotations and places them under their ROIs: the objects are
 * unlocked child annotations of the ROI's annotation, classified, with the model's measurements and
 * metadata. A run's results for all its ROIs are placed in one change of the hierarchy, which QuPath
 * records as exactly one undo step; a re-run replaces only earlier roiseg pre-annotations.
 *
 * <p>Uses only APIs present in QuPath 0.5, 0.6 and 0.7 ({@code addChildObjects},
 * {@code removeChildObjects}, {@code MeasurementList.put}, {@code PathObject.getMetadata}).
 */
public final class ResultMapper {

    /**
     * QuPath before 0.6 records an undo step only for hierarchy events that name changed objects:
     * its UndoRedoManager skips the structure-change event, whose list of changed objects is empty.
     */
    private static final boolean UNDO_SKIPS_STRUCTURE_EVENTS = isBefore06(GeneralTools.getSemanticVersion());

    /** What one placement changed. */
    public record Placement(int added, int removed, Set<PathClass> classes) {
    }

    private ResultMapper() {
    }

    /**
     * Creates the annotations for the specs on the ROI's plane (z and t), with geometries in QuPath's
     * precision model. Safe off the JavaFX thread: nothing is added to a hierarchy here.
     */
    public static List<PathObject> createObjects(List<ObjectSpec> specs, ImagePlane plane) {
        List<PathObject> objects = new ArrayList<>(specs.size());
        for (ObjectSpec spec : specs) {
            ROI roi = GeometryTools.geometryToROI(inQuPathPrecision(spec.geometry()), plane);
            if (roi == null || roi.isEmpty()) {
                continue;
            }
            PathClass pathClass = spec.className() == null ? null : pathClass(spec.className(), spec.rgb());
            PathObject annotation = PathObjects.createAnnotationObject(roi, pathClass);
            annotation.setLocked(false);
            objectId(spec.id()).ifPresent(annotation::setID);
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

    /** The server's object id as a UUID, if it is one (an object keeps it through corrections). */
    static Optional<UUID> objectId(String id) {
        if (id == null) {
            return Optional.empty();
        }
        try {
            return Optional.of(UUID.fromString(id));
        } catch (IllegalArgumentException e) {
            return Optional.empty();
        }
    }

    /**
     * The QuPath class of a name. A class QuPath already has (its built-in classes, the user's class
     * list, earlier results) keeps its colour: roiseg never recolours it. Only a class that does not
     * exist yet is created with roiseg's colour.
     */
    public static PathClass pathClass(String name, int rgb) {
        return PathClass.fromString(name, ObjectSpec.argb(rgb));
    }

    /**
     * A geometry in the precision model of QuPath's geometry factory (0.01 px), as QuPath's own ROIs
     * have it; JTS snap-rounding keeps it valid.
     */
    static Geometry inQuPathPrecision(Geometry geometry) {
        PrecisionModel precision = GeometryTools.getDefaultFactory().getPrecisionModel();
        if (precision.equals(geometry.getPrecisionModel())) {
            return geometry;
        }
        GeometryPrecisionReducer reducer = new GeometryPrecisionReducer(precision);
        reducer.setChangePrecisionModel(true);
        return reducer.reduce(geometry);
    }

    /**
     * Replaces the earlier roiseg pre-annotations under each ROI by that ROI's new objects, as one
     * change that QuPath records as one undo step. The user's own objects under a ROI stay; user
     * objects nested inside a replaced pre-annotation move up to the ROI. Call it on the thread that
     * owns the hierarchy's listeners (the JavaFX thread in the GUI).
     *
     * @param hierarchy the image's hierarchy
     * @param results   the new annotations per ROI annotation
     * @param source    the event's source
     */
    public static Placement replaceChildren(PathObjectHierarchy hierarchy,
                                            Map<PathObject, ? extends Collection<PathObject>> results, Object source) {
        List<PathObject> changed = new ArrayList<>();
        Set<PathObject> parents = new LinkedHashSet<>();
        Set<PathClass> classes = new LinkedHashSet<>();
        int added = 0;
        int removed = 0;
        for (Map.Entry<PathObject, ? extends Collection<PathObject>> entry : results.entrySet()) {
            PathObject parent = entry.getKey();
            Collection<PathObject> objects = entry.getValue();
            Replacement.Plan<PathObject> plan = Replacement.plan(new ArrayList<>(parent.getChildObjects()),
                    ResultMapper::children, PathObject::getMetadata);
            if (!plan.reattach().isEmpty()) {
                // addChildObjects takes each object away from its current parent first
                parent.addChildObjects(plan.reattach());
            }
            if (!plan.isEmpty()) {
                parent.removeChildObjects(new ArrayList<>(plan.remove()));
            }
            if (!objects.isEmpty()) {
                parent.addChildObjects(objects);
            }
            if (!plan.isEmpty() || !objects.isEmpty()) {
                parents.add(parent);
                changed.add(parent);
                changed.addAll(objects);
            }
            for (PathObject object : objects) {
                if (object.getPathClass() != null) {
                    classes.add(object.getPathClass());
                }
            }
            added += objects.size();
            removed += plan.remove().size();
        }
        if (!parents.isEmpty()) {
            fireOneUndoStep(hierarchy, source, parents.size() == 1 ? parents.iterator().next()
                    : hierarchy.getRootObject(), changed);
        }
        return new Placement(added, removed, classes);
    }

    /**
     * Tells the hierarchy's listeners that objects were added and removed below {@code parent}, with
     * the events that make QuPath's undo manager record exactly one step on every supported version.
     */
    private static void fireOneUndoStep(PathObjectHierarchy hierarchy, Object source, PathObject parent,
                                        List<PathObject> changed) {
        hierarchy.fireHierarchyChangedEvent(source, parent);
        if (UNDO_SKIPS_STRUCTURE_EVENTS) {
            hierarchy.fireObjectsChangedEvent(source, changed);
        }
    }

    static boolean isBefore06(Version version) {
        return version != null && version.getMajor() == 0 && version.getMinor() < 6;
    }

    private static Collection<PathObject> children(PathObject object) {
        return object.hasChildObjects() ? new ArrayList<>(object.getChildObjects()) : List.of();
    }
}
