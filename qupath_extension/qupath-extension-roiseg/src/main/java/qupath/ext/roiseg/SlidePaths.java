package qupath.ext.roiseg;

import java.net.URI;
import java.nio.file.Path;
import java.util.Collection;
import java.util.Optional;

/**
 * The path of the slide file the server should read itself, when "the server reads the slide" is
 * on. Plain Java, no QuPath classes.
 */
public final class SlidePaths {

    private SlidePaths() {
    }

    /**
     * The server-side path of an image that is one local file.
     *
     * @param uris         the image's URIs (QuPath's {@code ImageServer.getURIs()})
     * @param localPrefix  start of the local path to replace (e.g. {@code /Volumes/slides}); blank: none
     * @param serverPrefix what replaces it on the server (e.g. {@code /data/slides})
     * @return the path, or empty when the image is not exactly one local file (several files, a
     *         web or OMERO image, a file with a series or query part)
     */
    public static Optional<String> serverPath(Collection<URI> uris, String localPrefix, String serverPrefix) {
        if (uris == null || uris.size() != 1) {
            return Optional.empty();
        }
        URI uri = uris.iterator().next();
        if (uri == null || !"file".equalsIgnoreCase(uri.getScheme()) || uri.getRawQuery() != null
                || uri.getRawFragment() != null) {
            return Optional.empty();
        }
        String path;
        try {
            path = Path.of(uri).toString();
        } catch (IllegalArgumentException | java.nio.file.FileSystemNotFoundException e) {
            return Optional.empty();
        }
        return Optional.of(mapPrefix(path, localPrefix, serverPrefix));
    }

    /**
     * Replaces {@code localPrefix} at the start of {@code path} by {@code serverPrefix}; the rest
     * of the path then uses the server prefix's separator ('/' unless the server prefix has only
     * backslashes). Unchanged when the prefix is blank or does not match at a path boundary.
     */
    public static String mapPrefix(String path, String localPrefix, String serverPrefix) {
        String local = localPrefix == null ? "" : localPrefix.strip();
        String server = serverPrefix == null ? "" : serverPrefix.strip();
        if (local.isEmpty()) {
            return path;
        }
        String localTrimmed = trimSeparators(local);
        String normalisedPath = path.replace('\\', '/');
        String normalisedLocal = localTrimmed.replace('\\', '/');
        if (!(normalisedPath.equals(normalisedLocal) || normalisedPath.startsWith(normalisedLocal + "/"))) {
            return path;
        }
        String rest = normalisedPath.substring(normalisedLocal.length());
        boolean windowsServer = server.contains("\\") && !server.contains("/");
        String base = trimSeparators(server);
        String joined = base + rest;
        return windowsServer ? joined.replace('/', '\\') : joined;
    }

    private static String trimSeparators(String s) {
        String t = s;
        while (t.length() > 1 && (t.endsWith("/") || t.endsWith("\\"))) {
            t = t.substring(0, t.length() - 1);
        }
        return t;
    }
}
