package qupath.ext.roiseg;

import java.util.List;
import java.util.Locale;
import java.util.stream.Collectors;

/**
 * The Groovy line recorded in an image's workflow after a run, so that it can be replayed with
 * Workflow &gt; Create script (e.g. over a project). It calls {@link RoisegScripts}; the server
 * settings (and the token) are read from the preferences then, never written into the script.
 * Plain Java, no QuPath classes.
 */
public final class ScriptSteps {

    private ScriptSteps() {
    }

    /**
     * The script of one run.
     *
     * @param selectedOnly   whether the run segmented the selected annotations (else all of them)
     * @param userMicrons    the pixel size the user gave for an uncalibrated image; 0 or NaN for none
     * @param modelIds       the models that ran; empty for the server's default
     */
    public static String segmentScript(boolean selectedOnly, double userMicrons, List<String> modelIds) {
        String objects = selectedOnly ? "getSelectedObjects()" : "getAnnotationObjects()";
        String pixelSize = Resolution.isPositive(userMicrons)
                ? PixelSizes.format(userMicrons) : "0";
        String models = modelIds.stream().map(ScriptSteps::groovyString).collect(Collectors.joining(", "));
        return "qupath.ext.roiseg.RoisegScripts.segmentAnnotations(getCurrentImageData(), " + objects + ", "
                + pixelSize + (models.isEmpty() ? "" : ", " + models) + ")";
    }

    /** A Groovy single-quoted string literal of {@code s}. */
    public static String groovyString(String s) {
        StringBuilder sb = new StringBuilder("'");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '\\': sb.append("\\\\"); break;
                case '\'': sb.append("\\'"); break;
                case '\n': sb.append("\\n"); break;
                case '\r': sb.append("\\r"); break;
                case '\t': sb.append("\\t"); break;
                default:
                    if (c < 0x20) {
                        sb.append(String.format(Locale.ROOT, "\\u%04x", (int) c));
                    } else {
                        sb.append(c);
                    }
            }
        }
        return sb.append('\'').toString();
    }
}
