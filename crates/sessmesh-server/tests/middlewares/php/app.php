<?php
// One instance of a PHP site keeping its sessions in sessmesh through
// phpredis's session handler, with session locking. tests/middlewares.rs
// starts two of them (`php -S 127.0.0.1:0 app.php`), each with
// session.save_path on a different node, and php_sessions.py requests them.
//
// What phpredis (5.3 to 6.x) sends for one request, with
// redis.session.locking_enabled=1 and redis.session.lock_expire=N:
//   session_start()        SET PHPREDIS_SESSION:<id>_LOCK <hostname>|<pid> NX PX <N * 1000>,
//                          again every lock_wait_time µs while refused, at
//                          most lock_retries times (then it reads unlocked,
//                          with a notice); GET PHPREDIS_SESSION:<id>
//                          (a new session: the lock is taken under the new id)
//   session_write_close()  GET PHPREDIS_SESSION:<id>_LOCK  (is the lock still ours?)
//                          SETEX PHPREDIS_SESSION:<id> <session.gc_maxlifetime> <data>
//                          EVALSHA b70c2384248f88e6b75b9f89241a180f856ad852 1 <lock key> <secret>
//                          and, if that fails, EVAL of the script itself:
//                          if redis.call("get",KEYS[1]) == ARGV[1] then
//                              return redis.call("del",KEYS[1]) else return 0 end
//
// Query string:
//   mode=count              add one to $_SESSION['n'] (the default)
//   mode=overlap&hold_ms=N  also count itself "inside" in a key of its own,
//                           through its own connection, for N ms
//   mode=rendezvous         count itself inside and wait (up to 10 s) until
//                           another request is inside too: only possible
//                           without the lock, the control for mode=overlap
//   lock=0                  turn locking off for this request
// Answers JSON with what the request saw.

// An exception (a command the node refused) answers 500 with its message.
set_exception_handler(function (Throwable $e): void {
    http_response_code(500);
    $in = $e->getTrace()[0]['function'] ?? 'the script';
    echo json_encode(['error' => get_class($e) . " in $in(): " . $e->getMessage()]);
});
$notices = [];
set_error_handler(function (int $level, string $message) use (&$notices): bool {
    $notices[] = $message;
    return true;
});

$mode = $_GET['mode'] ?? 'count';
if (($_GET['lock'] ?? '1') === '0') {
    ini_set('redis.session.locking_enabled', '0');
}

session_start();
$in_at = microtime(true);
$sid = session_id();
$lock_key = 'PHPREDIS_SESSION:' . $sid . '_LOCK';

// A connection of its own to the same node, to look at the lock and to
// count requests inside the session.
$node = parse_url(ini_get('session.save_path'));
$probe = new Redis();
$probe->connect($node['host'], $node['port'], 5.0);
$lock_value = $probe->get($lock_key);
// phpredis's lock secret is "<hostname>|<pid>".
$held = $lock_value === gethostname() . '|' . getmypid();

$inside_key = 'inside:' . $sid;
$inside = 0;
if ($mode === 'overlap') {
    $inside = $probe->incr($inside_key);
    usleep((int) ($_GET['hold_ms'] ?? 50) * 1000);
    $probe->decr($inside_key);
} elseif ($mode === 'rendezvous') {
    // Stays counted when it leaves, so that the other one sees it too.
    $inside = $probe->incr($inside_key);
    $probe->expire($inside_key, 60);
    $deadline = microtime(true) + 10.0;
    while ($inside < 2 && microtime(true) < $deadline) {
        usleep(10 * 1000);
        $inside = (int) $probe->get($inside_key);
    }
}

$_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
$_SESSION['by'][] = getenv('APP_INSTANCE');
$n = $_SESSION['n'];
$by = $_SESSION['by'];
$out_at = microtime(true);
// Writes the session and releases the lock before anything is answered.
$written = session_write_close();

header('Content-Type: application/json');
echo json_encode([
    'instance' => getenv('APP_INSTANCE'),
    'pid' => getmypid(),
    'sid' => $sid,
    'n' => $n,
    'by' => $by,
    'held' => $held,
    'lock_value' => $lock_value,
    'inside' => $inside,
    'in_at' => $in_at,
    'out_at' => $out_at,
    'written' => $written,
    'gc_maxlifetime' => (int) ini_get('session.gc_maxlifetime'),
    'notices' => $notices,
]);
