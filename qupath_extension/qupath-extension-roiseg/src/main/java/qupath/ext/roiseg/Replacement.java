package qupath.ext.roiseg;

import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.function.Function;
import org.roiseg.client.Conventions;

/**
 * Which objects under a ROI a new segmentation replaces: only earlier roiseg pre-annotations (the
 * objects whose metadata {@link Conventions#isRoisegObject marks them}), never the user's own.
 * A user object that ended up nested inside a roiseg pre-annotation is kept and moved up to the
 * ROI. Works on any tree (QuPath's PathObjects in the extension, plain nodes in tests).
 */
public final class Replacement {

    private Replacement() {
    }

    /**
     * What to do with the children of a ROI.
     *
     * @param remove   direct children to remove (roiseg pre-annotations, with their subtrees)
     * @param reattach user objects inside those subtrees to move up to the ROI before the removal,
     *                 each with its own subtree
     * @param <T>      the node type
     */
    public record Plan<T>(List<T> remove, List<T> reattach) {

        /** Keeps unmodifiable copies. */
        public Plan {
            remove = List.copyOf(remove);
            reattach = List.copyOf(reattach);
        }

        /** Whether nothing needs to change. */
        public boolean isEmpty() {
            return remove.isEmpty();
        }
    }

    /**
     * Plans the replacement for the children of one ROI.
     *
     * @param children   the ROI's direct children
     * @param childrenOf a node's children
     * @param metadataOf a node's metadata (may return null)
     * @param <T>        the node type
     */
    public static <T> Plan<T> plan(Collection<? extends T> children, Function<? super T, ? extends Collection<? extends T>> childrenOf,
                                   Function<? super T, Map<String, String>> metadataOf) {
        List<T> remove = new ArrayList<>();
        List<T> reattach = new ArrayList<>();
        for (T child : children) {
            if (Conventions.isRoisegObject(metadataOf.apply(child))) {
                remove.add(child);
                collectUserObjects(child, childrenOf, metadataOf, reattach);
            }
        }
        return new Plan<>(remove, reattach);
    }

    private static <T> void collectUserObjects(T roisegObject, Function<? super T, ? extends Collection<? extends T>> childrenOf,
                                               Function<? super T, Map<String, String>> metadataOf, List<T> out) {
        Collection<? extends T> nested = childrenOf.apply(roisegObject);
        if (nested == null) {
            return;
        }
        for (T node : nested) {
            if (Conventions.isRoisegObject(metadataOf.apply(node))) {
                collectUserObjects(node, childrenOf, metadataOf, out);
            } else {
                out.add(node);
            }
        }
    }

    /**
     * Whether an object may be segmented as a ROI: not a roiseg pre-annotation itself.
     *
     * @param metadata the object's metadata, or null
     */
    public static boolean isSegmentable(Map<String, String> metadata) {
        return !Conventions.isRoisegObject(metadata);
    }
}
