SELECT outcome, IFNULL(reason, '') AS reason, COUNT(DISTINCT key) AS n
FROM `acme-prod`.`activations`.`rejections`
WHERE activation_id = @activation_id AND run_id = @run_id
GROUP BY 1, 2
ORDER BY n DESC, 1, 2
LIMIT @limit
