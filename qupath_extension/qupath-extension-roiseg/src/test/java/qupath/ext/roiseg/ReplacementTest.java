package qupath.ext.roiseg;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.roiseg.client.Conventions;

class ReplacementTest {

    /** A stand-in for a PathObject: children and metadata. */
    static final class Node {
        final String name;
        final Map<String, String> metadata;
        final List<Node> children = new ArrayList<>();

        Node(String name, Map<String, String> metadata, Node... children) {
            this.name = name;
            this.metadata = metadata;
            this.children.addAll(List.of(children));
        }

        @Override
        public String toString() {
            return name;
        }
    }

    static Node roiseg(String name, Node... children) {
        return new Node(name, Conventions.objectMetadata("model", "1"), children);
    }

    static Node user(String name, Node... children) {
        return new Node(name, new HashMap<>(), children);
    }

    static Replacement.Plan<Node> plan(Node... children) {
        return Replacement.plan(List.of(children), n -> n.children, n -> n.metadata);
    }

    @Test
    void onlyRoisegObjectsAreRemoved() {
        Node mine = user("mine");
        Node old1 = roiseg("old1");
        Node old2 = roiseg("old2");
        Replacement.Plan<Node> plan = plan(mine, old1, old2);
        assertEquals(List.of(old1, old2), plan.remove());
        assertTrue(plan.reattach().isEmpty());
    }

    @Test
    void nothingToDoWithoutRoisegObjects() {
        Node mine = user("mine", roiseg("inside my object"));
        Replacement.Plan<Node> plan = plan(mine, new Node("no metadata", null));
        assertTrue(plan.isEmpty());
        assertTrue(plan.reattach().isEmpty());
    }

    @Test
    void userObjectsInsideRoisegObjectsAreKept() {
        Node drawn = user("drawn", roiseg("nested result"));
        Node deep = user("deep");
        Node old = roiseg("old", drawn, roiseg("old child", deep));
        Replacement.Plan<Node> plan = plan(old);
        assertEquals(List.of(old), plan.remove());
        assertEquals(List.of(drawn, deep), plan.reattach());
    }

    @Test
    void otherSourcesAreUserObjects() {
        Map<String, String> other = new HashMap<>();
        other.put(Conventions.ROISEG_SOURCE_KEY, "someone else");
        assertTrue(plan(new Node("x", other)).isEmpty());
        assertTrue(Replacement.isSegmentable(other));
        assertTrue(Replacement.isSegmentable(null));
        assertFalse(Replacement.isSegmentable(Conventions.objectMetadata("m", "1")));
    }
}
