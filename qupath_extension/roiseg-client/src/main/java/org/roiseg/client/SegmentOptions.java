package org.roiseg.client;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.OptionalDouble;
import org.roiseg.proto.v1.Hysteresis;

/**
 * How to segment: which models, which classes, and the post-processing. Unset values take the
 * server's defaults. Build with {@link #builder()}; {@link #defaults()} is the server default model
 * with every option at its default.
 */
public final class SegmentOptions {

    private static final SegmentOptions DEFAULTS = builder().build();

    private final List<String> modelIds;
    private final List<String> classes;
    private final Double minAreaMicrons2;
    private final Double minHoleMicrons2;
    private final Double simplifyMicrons;
    private final boolean hysteresis;
    private final Double hysteresisLow;
    private final Double hysteresisHigh;
    private final boolean includeBackground;
    private final boolean allowUpsample;
    private final boolean confidenceMap;
    private final Double reviewBelow;
    private final Map<String, String> classNames;
    private final boolean allClasses;

    private SegmentOptions(Builder b) {
        modelIds = List.copyOf(b.modelIds);
        classes = List.copyOf(b.classes);
        minAreaMicrons2 = b.minAreaMicrons2;
        minHoleMicrons2 = b.minHoleMicrons2;
        simplifyMicrons = b.simplifyMicrons;
        hysteresis = b.hysteresis;
        hysteresisLow = b.hysteresisLow;
        hysteresisHigh = b.hysteresisHigh;
        includeBackground = b.includeBackground;
        allowUpsample = b.allowUpsample;
        confidenceMap = b.confidenceMap;
        reviewBelow = b.reviewBelow;
        classNames = Collections.unmodifiableMap(new LinkedHashMap<>(b.classNames));
        allClasses = b.allClasses;
    }

    /** A builder with every option unset. */
    public static Builder builder() {
        return new Builder();
    }

    /** The server's default model, all options at their defaults. */
    public static SegmentOptions defaults() {
        return DEFAULTS;
    }

    /** A builder holding these options. */
    public Builder toBuilder() {
        Builder b = new Builder().modelIds(modelIds).classes(classes).includeBackground(includeBackground)
                .allowUpsample(allowUpsample).confidenceMap(confidenceMap).allClasses(allClasses);
        b.reviewBelow = reviewBelow;
        b.classNames.putAll(classNames);
        b.minAreaMicrons2 = minAreaMicrons2;
        b.minHoleMicrons2 = minHoleMicrons2;
        b.simplifyMicrons = simplifyMicrons;
        b.hysteresis = hysteresis;
        b.hysteresisLow = hysteresisLow;
        b.hysteresisHigh = hysteresisHigh;
        return b;
    }

    /** Models to run, each giving its own result; empty: the server's default model. */
    public List<String> modelIds() {
        return modelIds;
    }

    /**
     * Class names to return; empty: all classes of the models but their catch-all classes
     * ({@link ClassDescription#catchAll()}, the rest of the tissue), or all of them with {@link #allClasses()}.
     */
    public List<String> classes() {
        return classes;
    }

    /** With {@link #classes()} empty: whether the models' catch-all classes are returned too. */
    public boolean allClasses() {
        return allClasses;
    }

    /** Class regions smaller than this many µm² are dropped; empty: none. */
    public OptionalDouble minAreaMicrons2() {
        return optional(minAreaMicrons2);
    }

    /** Holes smaller than this many µm² are filled; empty: none. */
    public OptionalDouble minHoleMicrons2() {
        return optional(minHoleMicrons2);
    }

    /** Polygon simplification tolerance in µm; empty: one model pixel (the server's default). */
    public OptionalDouble simplifyMicrons() {
        return optional(simplifyMicrons);
    }

    /** Whether hysteresis thresholding of the model's tumour class is on. */
    public boolean hysteresis() {
        return hysteresis;
    }

    /** Low hysteresis threshold (0..1); empty: the server's default (85/255). */
    public OptionalDouble hysteresisLow() {
        return optional(hysteresisLow);
    }

    /** High hysteresis threshold (0..1); empty: the server's default (229/255). */
    public OptionalDouble hysteresisHigh() {
        return optional(hysteresisHigh);
    }

    /** Whether the ROI's non-tissue area is returned too, as class {@link Conventions#BACKGROUND_CLASS}. */
    public boolean includeBackground() {
        return includeBackground;
    }

    /** Whether images coarser than a model's resolution are accepted (and upsampled). */
    public boolean allowUpsample() {
        return allowUpsample;
    }

    /** Whether each model's confidence map of the ROI is returned ({@link ConfidenceMap}). */
    public boolean confidenceMap() {
        return confidenceMap;
    }

    /** Objects whose mean class probability is below this (0..1) are flagged for review; empty: none. */
    public OptionalDouble reviewBelow() {
        return optional(reviewBelow);
    }

    /** Names the result gives the models' classes (model class to name); classes not named keep theirs. */
    public Map<String, String> classNames() {
        return classNames;
    }

    org.roiseg.proto.v1.SegmentOptions toProto() {
        org.roiseg.proto.v1.SegmentOptions.Builder b = org.roiseg.proto.v1.SegmentOptions.newBuilder()
                .addAllClasses(classes)
                .setIncludeBackground(includeBackground)
                .setAllowUpsample(allowUpsample)
                .setConfidenceMap(confidenceMap)
                .putAllClassNames(classNames)
                .setAllClasses(allClasses);
        if (reviewBelow != null) {
            b.setReviewBelow(reviewBelow);
        }
        if (minAreaMicrons2 != null) {
            b.setMinAreaUm2(minAreaMicrons2);
        }
        if (minHoleMicrons2 != null) {
            b.setMinHoleUm2(minHoleMicrons2);
        }
        if (simplifyMicrons != null) {
            b.setSimplifyUm(simplifyMicrons);
        }
        Hysteresis.Builder h = Hysteresis.newBuilder().setEnabled(hysteresis);
        if (hysteresisLow != null) {
            h.setLow(hysteresisLow);
        }
        if (hysteresisHigh != null) {
            h.setHigh(hysteresisHigh);
        }
        return b.setHysteresis(h).build();
    }

    private static OptionalDouble optional(Double value) {
        return value == null ? OptionalDouble.empty() : OptionalDouble.of(value);
    }

    @Override
    public String toString() {
        return "SegmentOptions{models=" + modelIds + ", classes=" + classes + ", minArea=" + minAreaMicrons2
                + ", minHole=" + minHoleMicrons2 + ", simplify=" + simplifyMicrons + ", hysteresis=" + hysteresis
                + "(" + hysteresisLow + ", " + hysteresisHigh + "), background=" + includeBackground
                + ", upsample=" + allowUpsample + ", confidenceMap=" + confidenceMap + ", reviewBelow="
                + reviewBelow + ", classNames=" + classNames + ", allClasses=" + allClasses + "}";
    }

    /** Collects {@link SegmentOptions}; every setter returns the builder. */
    public static final class Builder {

        private final List<String> modelIds = new ArrayList<>();
        private final List<String> classes = new ArrayList<>();
        private Double minAreaMicrons2;
        private Double minHoleMicrons2;
        private Double simplifyMicrons;
        private boolean hysteresis;
        private Double hysteresisLow;
        private Double hysteresisHigh;
        private boolean includeBackground;
        private boolean allowUpsample;
        private boolean confidenceMap;
        private Double reviewBelow;
        private final Map<String, String> classNames = new LinkedHashMap<>();
        private boolean allClasses;

        private Builder() {
        }

        /** Models to run (replaces earlier ones); none: the server's default model. */
        public Builder modelIds(Collection<String> ids) {
            modelIds.clear();
            for (String id : ids) {
                if (id == null || id.isBlank()) {
                    throw new IllegalArgumentException("a model id cannot be empty");
                }
                if (!modelIds.contains(id)) {
                    modelIds.add(id);
                }
            }
            return this;
        }

        /** @see #modelIds(Collection) */
        public Builder modelIds(String... ids) {
            return modelIds(Arrays.asList(ids));
        }

        /** Class names to return (replaces earlier ones); none: all but the catch-all classes (see {@link #allClasses}). */
        public Builder classes(Collection<String> names) {
            classes.clear();
            classes.addAll(names);
            return this;
        }

        /** @see #classes(Collection) */
        public Builder classes(String... names) {
            return classes(Arrays.asList(names));
        }

        /** Drops class regions below this many µm²; null unsets. */
        public Builder minAreaMicrons2(Double value) {
            minAreaMicrons2 = nonNegative("minimum area", value);
            return this;
        }

        /** Fills holes below this many µm²; null unsets. */
        public Builder minHoleMicrons2(Double value) {
            minHoleMicrons2 = nonNegative("minimum hole", value);
            return this;
        }

        /** Simplification tolerance in µm; null unsets (server default: one model pixel). */
        public Builder simplifyMicrons(Double value) {
            simplifyMicrons = nonNegative("simplification tolerance", value);
            return this;
        }

        /** Turns hysteresis thresholding of the tumour class on or off, with the default thresholds. */
        public Builder hysteresis(boolean enabled) {
            return hysteresis(enabled, null, null);
        }

        /**
         * Turns hysteresis thresholding of the tumour class on or off.
         *
         * @param low  low threshold 0..1, or null for the server's default
         * @param high high threshold 0..1 (&gt;= low), or null for the server's default
         */
        public Builder hysteresis(boolean enabled, Double low, Double high) {
            for (Double v : new Double[] {low, high}) {
                if (v != null && !(v >= 0 && v <= 1)) {
                    throw new IllegalArgumentException("hysteresis thresholds are between 0 and 1, got " + v);
                }
            }
            if (low != null && high != null && low > high) {
                throw new IllegalArgumentException("the low hysteresis threshold " + low
                        + " is above the high one " + high);
            }
            hysteresis = enabled;
            hysteresisLow = low;
            hysteresisHigh = high;
            return this;
        }

        /**
         * With no classes named: also return the models' catch-all classes ({@link ClassDescription#catchAll()}:
         * the rest of the tissue, e.g. the default model's "Other tissue"), which are left out by default.
         */
        public Builder allClasses(boolean all) {
            allClasses = all;
            return this;
        }

        /** Also return the non-tissue area of the ROI as {@link Conventions#BACKGROUND_CLASS}. */
        public Builder includeBackground(boolean include) {
            includeBackground = include;
            return this;
        }

        /** Accept images coarser than the model's resolution. */
        public Builder allowUpsample(boolean allow) {
            allowUpsample = allow;
            return this;
        }

        /** Also return each model's confidence map of the ROI. */
        public Builder confidenceMap(boolean wanted) {
            confidenceMap = wanted;
            return this;
        }

        /** Flags objects whose mean class probability is below this (0..1) for review; null unsets. */
        public Builder reviewBelow(Double threshold) {
            if (threshold != null && !(threshold >= 0 && threshold <= 1)) {
                throw new IllegalArgumentException("the review threshold is a probability between 0 and 1, got "
                        + threshold);
            }
            reviewBelow = threshold;
            return this;
        }

        /**
         * Names to give the models' classes in the result (replaces earlier ones), e.g. a QuPath class of the
         * user's: {@code Map.of("Gland epithelium", "Tumor")}.
         */
        public Builder classNames(Map<String, String> names) {
            for (var e : names.entrySet()) {
                if (e.getKey() == null || e.getKey().isBlank() || e.getValue() == null || e.getValue().isBlank()) {
                    throw new IllegalArgumentException("a class and its new name cannot be empty: " + e);
                }
            }
            classNames.clear();
            classNames.putAll(names);
            return this;
        }

        /** The options. */
        public SegmentOptions build() {
            return new SegmentOptions(this);
        }

        private static Double nonNegative(String what, Double value) {
            if (value != null && !(value >= 0 && Double.isFinite(value))) {
                throw new IllegalArgumentException("the " + what + " must be a non-negative number, got " + value);
            }
            return value;
        }
    }
}
