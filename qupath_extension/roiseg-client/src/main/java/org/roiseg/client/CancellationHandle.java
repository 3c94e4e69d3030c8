package org.roiseg.client;

import io.grpc.Context;

/**
 * Lets another thread cancel one call of {@link RoisegClient}: the call then stops, the server
 * is told to stop working on it, and the call throws {@link RoisegCancelledException}.
 * A handle cancelled before the call starts makes the call fail at once. Use one handle per call.
 */
public final class CancellationHandle {

    private final Object lock = new Object();
    private boolean cancelled;
    private Context.CancellableContext context;

    /** Cancels the call this handle was given to; safe from any thread, repeatable. */
    public void cancel() {
        Context.CancellableContext running;
        synchronized (lock) {
            cancelled = true;
            running = context;
        }
        if (running != null) {
            running.cancel(null);
        }
    }

    /** Whether {@link #cancel()} was called. */
    public boolean isCancelled() {
        synchronized (lock) {
            return cancelled;
        }
    }

    void attach(Context.CancellableContext running) {
        boolean cancelNow;
        synchronized (lock) {
            context = running;
            cancelNow = cancelled;
        }
        if (cancelNow) {
            running.cancel(null);
        }
    }

    void detach(Context.CancellableContext running) {
        synchronized (lock) {
            if (context == running) {
                context = null;
            }
        }
    }
}
