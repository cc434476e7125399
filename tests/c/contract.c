/* Promises of the C API to a host such as DentalTID (Dart FFI) about work in flight and the
 * host's own SQLite, checked from a real C host.
 *
 * Usage: contract <scenario> <PatientData> <dentaltid.db>, where the scenario is
 * close_cuts_short_export_existing, host_sqlite_keeps_dentaltid_intact,
 * close_at_thread_exit, close_at_thread_exit_after_reopening or open_at_thread_exit.
 * Prints one line per broken promise and exits 1 if any; exits 0 otherwise; 2 when the
 * scenario could not be set up. */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "scenario.h"

static void print_last_error(const char *what, uint32_t code) {
    char *message = nps_last_error_message();
    printf("%s: code %u, message %.200s%s\n", what, (unsigned)code, message ? message : "(none)",
           message && strlen(message) > 200 ? "..." : "");
    nps_string_free(message);
}

/* close_cuts_short_export_existing: "Export existing" runs on a worker thread (a Dart isolate)
 * over a clinic with thousands of unlinked patients; the user quits, and the app's UI thread
 * calls nps_close. The engine stops work between patients when the handle closes, so the close
 * must return promptly (a few seconds at most), not after the whole export. */
static NpsHandle *exporting_handle;
static uint32_t export_code;
static uint64_t exported_count;

static void *export_existing(void *unused) {
    (void)unused;
    export_code = nps_export_existing(exporting_handle, &exported_count);
    return NULL;
}

static void close_cuts_short_export_existing(const char *root, const char *db) {
    exporting_handle = open_clinic(root, db, 100);
    pthread_t worker;
    pthread_create(&worker, NULL, export_existing, NULL);
    /* Wait, with a deadline, until the export is under way: its first patient_exported event. */
    int under_way = 0;
    double deadline = seconds_now() + 60.0;
    char *event = NULL;
    while (!under_way && seconds_now() < deadline) {
        if (nps_next_event(exporting_handle, 1000, &event) == NPS_OK) {
            under_way = strstr(event, "\"type\":\"patient_exported\"") != NULL;
            nps_string_free(event);
            event = NULL;
        }
    }
    if (!under_way) {
        printf("the export never started\n");
        exit(2);
    }
    double started = seconds_now();
    uint32_t close_code = nps_close(exporting_handle);
    double took = seconds_now() - started;
    pthread_join(worker, NULL);
    printf("nps_close returned %u after %.2f s; nps_export_existing returned %u with %llu exported\n",
           (unsigned)close_code, took, (unsigned)export_code, (unsigned long long)exported_count);
    expect(close_code == NPS_OK, "the handle closes");
    expect(took < 3.0, "nps_close cuts the export in flight short instead of waiting for all of it");
    nps_free(exporting_handle);
}

/* host_sqlite_keeps_dentaltid_intact: DentalTID reaches dentaltid.db through its own SQLite (the
 * Dart `sqlite3` package opens the system's libsqlite3, as this host does with dlopen), in the
 * same process that loaded the library, while Live Sync runs. Patients DentalTID adds while the
 * sync exports them must all be written, and the file must stay a sound database. */
struct host_sqlite {
    int (*open)(const char *, void **);
    int (*busy_timeout)(void *, int);
    int (*exec)(void *, const char *, void *, void *, char **);
    const char *(*errmsg)(void *);
    int (*prepare_v2)(void *, const char *, int, void **, const char **);
    int (*step)(void *);
    const unsigned char *(*column_text)(void *, int);
    long long (*column_int64)(void *, int);
    int (*finalize)(void *);
    int (*close)(void *);
};

static void load_symbol(void *library, const char *name, void *slot) {
    void *symbol = dlsym(library, name);
    if (symbol == NULL) {
        printf("libsqlite3 has no %s\n", name);
        exit(2);
    }
    memcpy(slot, &symbol, sizeof symbol);
}

static struct host_sqlite load_host_sqlite(void) {
    void *library = dlopen("libsqlite3.so.0", RTLD_NOW | RTLD_LOCAL);
    if (library == NULL) {
        printf("the system's libsqlite3.so.0 could not be loaded: %s\n", dlerror());
        exit(2);
    }
    struct host_sqlite sqlite;
    load_symbol(library, "sqlite3_open", &sqlite.open);
    load_symbol(library, "sqlite3_busy_timeout", &sqlite.busy_timeout);
    load_symbol(library, "sqlite3_exec", &sqlite.exec);
    load_symbol(library, "sqlite3_errmsg", &sqlite.errmsg);
    load_symbol(library, "sqlite3_prepare_v2", &sqlite.prepare_v2);
    load_symbol(library, "sqlite3_step", &sqlite.step);
    load_symbol(library, "sqlite3_column_text", &sqlite.column_text);
    load_symbol(library, "sqlite3_column_int64", &sqlite.column_int64);
    load_symbol(library, "sqlite3_finalize", &sqlite.finalize);
    load_symbol(library, "sqlite3_close", &sqlite.close);
    return sqlite;
}

static long long count_patients(struct host_sqlite *sqlite, void *db) {
    void *statement = NULL;
    long long count = -1;
    if (sqlite->prepare_v2(db, "SELECT count(*) FROM patients", -1, &statement, NULL) == 0 && sqlite->step(statement) == 100)
        count = sqlite->column_int64(statement, 0);
    sqlite->finalize(statement);
    return count;
}

static void host_sqlite_keeps_dentaltid_intact(const char *root, const char *db_path) {
    struct host_sqlite sqlite = load_host_sqlite();
    /* Polling often: every poll reads dentaltid.db while the host writes it. */
    NpsHandle *handle = open_clinic(root, db_path, 10);
    uint32_t live_code = nps_set_live_sync(handle, true);
    if (live_code != NPS_OK) {
        print_last_error("switching Live Sync on", live_code);
        exit(2);
    }
    /* Live Sync's first reconcile, with a deadline. */
    char *event = NULL;
    int reconciled = 0;
    while (!reconciled && nps_next_event(handle, 10000, &event) == NPS_OK) {
        reconciled = strstr(event, "\"type\":\"reconciled\"") != NULL;
        nps_string_free(event);
        event = NULL;
    }
    if (!reconciled) {
        printf("Live Sync's first reconcile never came\n");
        exit(2);
    }
    void *db = NULL;
    if (sqlite.open(db_path, &db) != 0) {
        printf("the host could not open %s\n", db_path);
        exit(2);
    }
    sqlite.busy_timeout(db, 5000);
    long long before = count_patients(&sqlite, db);
    enum { ADDED = 200 };
    int refused = 0;
    for (int i = 0; i < ADDED; i++) {
        const char *insert =
            "INSERT INTO patients(name, familyName, age, dateOfBirth, healthState, diagnosis, treatment, payment,"
            " createdAt, isEmergency, severity, healthAlerts, phoneNumber, isBlacklisted)"
            " VALUES ('Added', 'ByDentalTID', 30, NULL, '', '', '', 0.0, '2025-01-22T09:00:00.000', 0,"
            " 'EmergencySeverity.low', '', '', 0)";
        if (sqlite.exec(db, insert, NULL, NULL, NULL) != 0 && refused++ < 3)
            printf("DentalTID's insert %d failed: %s\n", i, sqlite.errmsg(db));
    }
    /* "Sync Now", then every event the sync sent. */
    char *report = NULL;
    uint32_t reconcile_code = nps_reconcile(handle, &report);
    nps_string_free(report);
    int database_errors = 0;
    while (nps_next_event(handle, 500, &event) == NPS_OK) {
        if (strstr(event, "\"type\":\"sync_error\"") && database_errors++ < 3) printf("event: %.300s\n", event);
        nps_string_free(event);
        event = NULL;
    }
    nps_close(handle);
    nps_free(handle);
    long long after = count_patients(&sqlite, db);
    void *statement = NULL;
    char integrity[512] = "(could not run)";
    if (sqlite.prepare_v2(db, "PRAGMA integrity_check", -1, &statement, NULL) == 0 && sqlite.step(statement) == 100)
        snprintf(integrity, sizeof integrity, "%s", (const char *)sqlite.column_text(statement, 0));
    sqlite.finalize(statement);
    sqlite.close(db);
    printf("DentalTID's inserts refused: %d of %d; patients before %lld, after %lld; nps_reconcile %u;"
           " sync_error events %d; integrity_check: %.300s\n",
           refused, ADDED, before, after, (unsigned)reconcile_code, database_errors, integrity);
    expect(refused == 0, "every patient DentalTID adds through its own SQLite is written");
    expect(after == before + ADDED, "dentaltid.db holds every patient DentalTID added");
    expect(strcmp(integrity, "ok") == 0, "dentaltid.db passes PRAGMA integrity_check");
    expect(reconcile_code == NPS_OK && database_errors == 0, "the sync reports no database error");
}

/* close_at_thread_exit: a host that keeps its handle with the thread that uses it releases it in
 * that thread's exit cleanup (a pthread key's destructor, as C++ thread_local objects and many C
 * libraries do), after the thread's own thread-local data is gone. Every call there still returns
 * a result code: none may abort the process. */
static NpsHandle *thread_handle;
static pthread_key_t thread_cleanup;
static uint32_t cleanup_codes[3] = {99, 99, 99};
static int cleanup_ran;

static void release_at_thread_exit(void *unused) {
    (void)unused;
    cleanup_codes[0] = nps_set_wakeup_callback(thread_handle, NULL, NULL);
    cleanup_codes[1] = nps_close(thread_handle);
    cleanup_codes[2] = nps_close(thread_handle);
    nps_free(thread_handle);
    cleanup_ran = 1;
}

static void *use_then_exit(void *unused) {
    (void)unused;
    bool enabled = true;
    expect(nps_live_sync(thread_handle, &enabled) == NPS_OK, "the thread reads the Live Sync setting");
    pthread_setspecific(thread_cleanup, thread_handle);
    return NULL;
}

/* Runs `body` on a new thread whose exit cleanup is `cleanup` (given what `body` stored under
 * `thread_cleanup`), and waits for the thread to end. */
static void run_with_exit_cleanup(void *(*body)(void *), void (*cleanup)(void *)) {
    if (pthread_key_create(&thread_cleanup, cleanup) != 0) {
        printf("pthread_key_create failed\n");
        exit(2);
    }
    pthread_t thread;
    pthread_create(&thread, NULL, body, NULL);
    pthread_join(thread, NULL);
}

/* The database is free for a new handle once the old one is closed. */
static void expect_free_for_a_new_handle(const char *root, const char *db) {
    NpsHandle *again = open_clinic(root, db, 100);
    expect(nps_close(again) == NPS_OK, "the database is free for a new handle once the old one is closed");
    nps_free(again);
}

static void close_at_thread_exit(const char *root, const char *db) {
    thread_handle = open_clinic(root, db, 100);
    run_with_exit_cleanup(use_then_exit, release_at_thread_exit);
    printf("cleanup ran: %d; nps_set_wakeup_callback %u, nps_close %u, nps_close again %u\n", cleanup_ran,
           (unsigned)cleanup_codes[0], (unsigned)cleanup_codes[1], (unsigned)cleanup_codes[2]);
    expect(cleanup_ran, "the thread's exit cleanup ran to its end");
    expect(cleanup_codes[0] == NPS_OK, "clearing the wakeup callback at thread exit gives NPS_OK");
    expect(cleanup_codes[1] == NPS_OK && cleanup_codes[2] == NPS_OK, "closing at thread exit gives NPS_OK");
    expect_free_for_a_new_handle(root, db);
}

/* close_at_thread_exit_after_reopening: the same host thread closed a first handle (the user
 * chose another NanoPix folder, say) and opened the one it now keeps; its exit cleanup closes
 * that one, after the thread's thread-local data is gone. The close gives NPS_OK, and a thread
 * draining the queue is given `closed`, the last event, as after any other close. */
static NpsHandle *reopened_handle;
static uint32_t reopened_close_code = 99;
static int reopened_given_closed;

static void close_reopened_at_thread_exit(void *unused) {
    (void)unused;
    reopened_close_code = nps_close(reopened_handle);
    char *event = NULL;
    while (nps_next_event(reopened_handle, 0, &event) == NPS_OK) {
        reopened_given_closed |= strstr(event, "\"type\":\"closed\"") != NULL;
        nps_string_free(event);
        event = NULL;
    }
    nps_free(reopened_handle);
}

static const char *reopened_root, *reopened_db;

static void *reopen_then_exit(void *unused) {
    (void)unused;
    NpsHandle *first = open_clinic(reopened_root, reopened_db, 100);
    expect(nps_close(first) == NPS_OK, "the thread closes its first handle");
    nps_free(first);
    reopened_handle = open_clinic(reopened_root, reopened_db, 100);
    pthread_setspecific(thread_cleanup, reopened_handle);
    return NULL;
}

static void close_at_thread_exit_after_reopening(const char *root, const char *db) {
    reopened_root = root;
    reopened_db = db;
    run_with_exit_cleanup(reopen_then_exit, close_reopened_at_thread_exit);
    printf("nps_close at thread exit %u; closed given: %d\n", (unsigned)reopened_close_code, reopened_given_closed);
    expect(reopened_close_code == NPS_OK, "closing at thread exit gives NPS_OK");
    expect(reopened_given_closed, "the queue gives `closed` after a close at thread exit");
    expect_free_for_a_new_handle(root, db);
}

/* open_at_thread_exit: a host that opens its handle lazily may first do so in a thread's exit
 * cleanup (a pthread key's destructor), after the thread's own thread-local data is gone. The
 * open gives NPS_OK, and the handle syncs and closes as any other. */
static uint32_t exit_open_code = 99, exit_reconcile_code = 99, exit_close_code = 99;
static const char *exit_root, *exit_db;

static void open_at_exit(void *unused) {
    (void)unused;
    char config[4096];
    snprintf(config, sizeof config, "{\"nanopix_root\": \"%s\", \"dentaltid_db\": \"%s\"}", exit_root, exit_db);
    NpsHandle *handle = NULL;
    exit_open_code = nps_open(config, &handle);
    if (exit_open_code != NPS_OK) {
        return;
    }
    char *report = NULL;
    exit_reconcile_code = nps_reconcile(handle, &report);
    nps_string_free(report);
    exit_close_code = nps_close(handle);
    nps_free(handle);
}

static void *mark_then_exit(void *unused) {
    (void)unused;
    pthread_setspecific(thread_cleanup, &exit_open_code);
    return NULL;
}

static void open_at_thread_exit(const char *root, const char *db) {
    exit_root = root;
    exit_db = db;
    run_with_exit_cleanup(mark_then_exit, open_at_exit);
    printf("nps_open at thread exit %u, nps_reconcile %u, nps_close %u\n", (unsigned)exit_open_code,
           (unsigned)exit_reconcile_code, (unsigned)exit_close_code);
    expect(exit_open_code == NPS_OK, "opening at thread exit gives NPS_OK");
    expect(exit_reconcile_code == NPS_OK && exit_close_code == NPS_OK, "the handle opened there syncs and closes");
    expect_free_for_a_new_handle(root, db);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s <scenario> <PatientData> <dentaltid.db>\n", argv[0]);
        return 2;
    }
    const char *scenario = argv[1], *root = argv[2], *db = argv[3];
    if (strcmp(scenario, "close_cuts_short_export_existing") == 0) {
        close_cuts_short_export_existing(root, db);
    } else if (strcmp(scenario, "host_sqlite_keeps_dentaltid_intact") == 0) {
        host_sqlite_keeps_dentaltid_intact(root, db);
    } else if (strcmp(scenario, "close_at_thread_exit") == 0) {
        close_at_thread_exit(root, db);
    } else if (strcmp(scenario, "close_at_thread_exit_after_reopening") == 0) {
        close_at_thread_exit_after_reopening(root, db);
    } else if (strcmp(scenario, "open_at_thread_exit") == 0) {
        open_at_thread_exit(root, db);
    } else {
        fprintf(stderr, "unknown scenario %s\n", scenario);
        return 2;
    }
    return broken == 0 ? 0 : 1;
}
